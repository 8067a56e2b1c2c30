import { createContext, createElement, useContext, useEffect, useRef, useState } from 'react';
import type { ReactNode } from 'react';
import { RoomcastClient } from './client.js';
import type { ClientOptions, Mode } from './client.js';

/** A JWT, or a function answering one (called on each connection and before expiry). */
export type TokenSource = string | (() => string | Promise<string>);

/** The client options the provider passes through (all but `token`, `url`, `mode`). */
export type ProviderClientOptions = Omit<ClientOptions, 'token' | 'url' | 'mode'>;

export interface RoomcastProviderProps {
  /**
   * A client made by the application. The provider shares it and never
   * closes it. When given, `url`, `token`, `mode` and `options` are ignored.
   */
  client?: RoomcastClient;
  /** The server's base URL; default: the page's origin. */
  url?: string;
  /**
   * A JWT or a token function. It may change between renders: the latest is
   * used from the next connection (or renewal) on, without a new client.
   */
  token?: TokenSource;
  /** The connection mode: `realtime`, `polling` or `auto` (default). Changing it switches the mode. */
  mode?: Mode;
  /** Further client options (backoff, timeouts...). Read when the client is made. */
  options?: ProviderClientOptions;
  children?: ReactNode;
}

/** undefined: no provider above; null: the provider is making its client. */
const RoomcastContext = createContext<RoomcastClient | null | undefined>(undefined);
RoomcastContext.displayName = 'RoomcastContext';

interface Parked {
  key: string;
  client: RoomcastClient;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * Shares one RoomcastClient with the components below it: the one given as
 * `client`, or one it makes from `url`/`token`/`mode` after mounting and
 * closes on unmounting (every connection and timer ends).
 */
export function RoomcastProvider(props: RoomcastProviderProps): ReturnType<typeof createElement> {
  const { client: external, url, token, mode, options, children } = props;
  const tokenRef = useRef<TokenSource | undefined>(token);
  useEffect(() => {
    tokenRef.current = token;
  }, [token]);
  const modeRef = useRef<Mode | undefined>(mode);
  modeRef.current = mode;
  const [owned, setOwned] = useState<RoomcastClient | null>(null);
  const parked = useRef<Parked | null>(null);
  // A new client only when the server or the options change (not the token).
  const key = external ? '' : JSON.stringify([url ?? null, options ?? null]);

  useEffect(() => {
    if (external) return undefined;
    if (token === undefined) {
      throw new Error('RoomcastProvider: give a `client`, or a `token` (and optionally `url`, `mode`)');
    }
    let client: RoomcastClient;
    const p = parked.current;
    parked.current = null;
    if (p && p.key === key) {
      // StrictMode's simulated unmount/remount (or a quick re-mount): keep the client.
      clearTimeout(p.timer);
      client = p.client;
    } else {
      if (p) {
        clearTimeout(p.timer);
        p.client.close();
      }
      client = new RoomcastClient({
        ...(options ?? {}),
        ...(url !== undefined ? { url } : {}),
        ...(modeRef.current !== undefined ? { mode: modeRef.current } : {}),
        token: () => {
          const t = tokenRef.current;
          if (t === undefined) throw new Error('RoomcastProvider: no token');
          return typeof t === 'function' ? t() : t;
        },
      });
    }
    setOwned(client);
    return () => {
      // Closed on the next tick unless the same provider mounts again at once.
      const timer = setTimeout(() => {
        if (parked.current?.client === client) parked.current = null;
        client.close();
      }, 0);
      parked.current = { key, client, timer };
    };
    // `token` and `mode` are read through refs; `options` is part of `key`.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [external, key]);

  const client = external ?? owned;
  useEffect(() => {
    if (client && mode && client.mode !== mode) client.setMode(mode);
  }, [client, mode]);

  return createElement(RoomcastContext.Provider, { value: client ?? null }, children);
}

/**
 * The RoomcastClient of the nearest RoomcastProvider: null while a provider
 * that makes its own client has not mounted yet (the first render). Throws
 * outside a provider.
 */
export function useRoomcast(): RoomcastClient | null {
  const client = useContext(RoomcastContext);
  if (client === undefined) {
    throw new Error('useRoomcast/useRoom/useRooms must be used inside a <RoomcastProvider>');
  }
  return client;
}
