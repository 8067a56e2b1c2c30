// @ts-check
/** A small typed event emitter, the base of the client, its rooms and lists. */

/**
 * @template {object} E
 */
export class Emitter {
  constructor() {
    /** @type {Map<keyof E, Set<(payload: any) => void>>} */
    this._listeners = new Map();
  }

  /**
   * Calls `fn` on every `name` event; answers a function that removes it.
   * @template {keyof E} K
   * @param {K} name
   * @param {(payload: E[K]) => void} fn
   * @returns {() => void}
   */
  on(name, fn) {
    let set = this._listeners.get(name);
    if (!set) {
      set = new Set();
      this._listeners.set(name, set);
    }
    set.add(fn);
    return () => this.off(name, fn);
  }

  /**
   * @template {keyof E} K
   * @param {K} name
   * @param {(payload: E[K]) => void} fn
   */
  off(name, fn) {
    this._listeners.get(name)?.delete(fn);
  }

  /**
   * @template {keyof E} K
   * @param {K} name
   * @param {E[K]} payload
   */
  emit(name, payload) {
    for (const fn of [...(this._listeners.get(name) ?? [])]) {
      try {
        fn(payload);
      } catch (e) {
        // A listener's bug must not break delivery; surface it asynchronously.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}
