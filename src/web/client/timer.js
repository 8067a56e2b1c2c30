// @ts-check
/**
 * A timeout that also knows its wall-clock due time, so the watchdog can run
 * it when a throttled page did not.
 */
export class Timer {
  /**
   * @param {number} delayMs
   * @param {() => void} fn
   */
  constructor(delayMs, fn) {
    this.fn = fn;
    this.dueAt = Date.now() + delayMs;
    this.done = false;
    this.handle = setTimeout(() => this.fire(), delayMs);
  }

  /** @param {number} now */
  due(now) {
    return !this.done && now >= this.dueAt;
  }

  /** Runs it now (once). */
  fire() {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.handle);
    this.fn();
  }

  cancel() {
    this.done = true;
    clearTimeout(this.handle);
  }

  /**
   * Not before `ms` from now (a server's Retry-After).
   * @param {number} ms
   */
  atLeast(ms) {
    const at = Date.now() + ms;
    if (this.done || at <= this.dueAt) return;
    clearTimeout(this.handle);
    this.dueAt = at;
    this.handle = setTimeout(() => this.fire(), ms);
  }
}
