// @ts-check
/**
 * The client's credentials (a JWT, or a provider renewed before expiry) and
 * its REST reads, with the server's errors as `HttpError`.
 */

/**
 * `fetch` failed with a status the caller may act on.
 */
export class HttpError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {number | null} retryAfterMs
   */
  constructor(status, code, message, retryAfterMs) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/** @param {unknown} e */
export function errorText(e) {
  return e instanceof Error ? e.message : String(e);
}

/**
 * The `exp` claim of a JWT, in epoch ms (null when unreadable).
 * @param {string} jwt
 * @returns {number | null}
 */
function jwtExpiry(jwt) {
  try {
    const part = jwt.split('.')[1] ?? '';
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const exp = JSON.parse(json).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  } catch {
    return null;
  }
}

/**
 * The token: a fixed JWT, or a provider called again when the last token is
 * within its renewal margin, was refused, or a connection asks for a fresh
 * one.
 */
export class Credentials {
  /** @param {string | (() => string | Promise<string>)} source */
  constructor(source) {
    this.source = source;
    /** @type {string | null} */
    this.token = null;
    /** The token's expiry, epoch ms. @type {number | null} */
    this.exp = null;
    /** When the token was minted (received), epoch ms. */
    this.at = 0;
    /** @type {Promise<string> | null} */
    this.pending = null;
  }

  /** A fixed token (never renewed). */
  get fixed() {
    return typeof this.source === 'string';
  }

  /**
   * The token to use now: the provider is called again when the last one is
   * within its renewal margin (or `force`).
   * @param {boolean} [force]
   * @returns {Promise<string>}
   */
  async get(force = false) {
    const t = this.source;
    if (typeof t === 'string') return t;
    if (!force && this.token !== null && !this.due()) return this.token;
    if (!this.pending) {
      this.pending = Promise.resolve()
        .then(() => t())
        .then((token) => {
          if (typeof token !== 'string' || !token) throw new Error('the token provider returned no token');
          this.token = token;
          this.exp = jwtExpiry(token);
          this.at = Date.now();
          return token;
        })
        .finally(() => {
          this.pending = null;
        });
    }
    return this.pending;
  }

  /**
   * When the current token should be renewed (epoch ms), or null: a fifth of
   * its life before expiry, at most a minute before.
   */
  renewAt() {
    if (this.exp === null) return null;
    const life = this.exp - this.at;
    return this.exp - Math.min(60000, Math.max(0, life) / 5);
  }

  /** The token is within its renewal margin. */
  due() {
    const at = this.renewAt();
    return at !== null && Date.now() >= at;
  }

  /** The server refused the token: the next use asks the provider. */
  forget() {
    this.token = null;
  }
}

/** GET requests to the server, with the token. */
export class Rest {
  /**
   * @param {string} base the server's base URL
   * @param {Credentials} credentials
   */
  constructor(base, credentials) {
    this.base = base;
    this.credentials = credentials;
  }

  /**
   * GET with the token; answers the JSON body, or null for 304.
   * @param {string} path
   * @param {AbortSignal} [signal]
   * @param {Record<string, string>} [headers]
   * @returns {Promise<any>}
   */
  async get(path, signal, headers = {}) {
    const token = await this.credentials.get();
    const res = await fetch(`${this.base}${path}`, {
      headers: { ...headers, authorization: `Bearer ${token}` },
      signal,
      cache: 'no-store',
    });
    if (res.status === 304) return null;
    if (!res.ok) {
      /** @type {any} */
      let body = null;
      try {
        body = await res.json();
      } catch {
        // not JSON
      }
      const ra = Number(res.headers.get('retry-after'));
      if (res.status === 401) this.credentials.forget();
      throw new HttpError(
        res.status,
        body?.error?.code ?? `http_${res.status}`,
        body?.error?.message ?? res.statusText,
        Number.isFinite(ra) && ra > 0 ? ra * 1000 : null,
      );
    }
    return res.json();
  }
}
