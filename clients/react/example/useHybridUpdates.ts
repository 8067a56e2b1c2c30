// Seed 004's `useHybridUpdates` hook (WebSocket with a polling fallback,
// health monitoring, a data-source badge and a refresh), rebuilt on
// roomcast's useRoom. What the original hand-built (reconnect backoff, the
// fallback and its return, sequence tracking, heartbeat) is the client's;
// this only maps roomcast's names onto the original hook's.
//
//   original                          here
//   useHybridUpdates(fetch, userId)   useHybridUpdates(room)
//   data                              events (each once, in seq order)
//   updateSource 'websocket'|'polling' transport websocket / longpoll
//   websocketStatus connected|...     status live / delayed / offline
//   websocketEnabled: false           mode 'polling'
//   fallbackDelay, pollingInterval    client options connectTimeoutMs /
//                                     fallbackAfter, pollWaitS (provider)

import { useRoom } from '@roomcast/react';
import type { Mode, RoomEvent, UseRoomResult } from '@roomcast/react';

export interface HybridConfig {
  /**
   * false: this room long-polls (the room's mode `polling`; the provider's
   * other rooms keep their transport). true or absent: the provider's mode.
   */
  websocketEnabled?: boolean;
  /** Keep the room's messages as they stand (read once with view=latest). */
  messages?: boolean;
}

export type UpdateSource = 'websocket' | 'polling' | null;
export type WebsocketStatus = 'connected' | 'connecting' | 'disconnected';

export interface HybridUpdates extends UseRoomResult {
  data: readonly RoomEvent[];
  loading: boolean;
  updateSource: UpdateSource;
  websocketStatus: WebsocketStatus;
}

export function useHybridUpdates(room: string, config: HybridConfig = {}): HybridUpdates {
  const mode: Mode | undefined = config.websocketEnabled === false ? 'polling' : undefined;
  const r = useRoom(room, { ...(config.messages ? { messages: true } : { since: 0 }), ...(mode ? { mode } : {}) });
  return {
    ...r,
    data: r.events,
    loading: r.loading,
    updateSource: r.transport === 'websocket' ? 'websocket' : r.transport === 'longpoll' ? 'polling' : null,
    websocketStatus: r.status === 'live' ? 'connected' : r.status === 'delayed' || r.status === 'connecting' ? 'connecting' : 'disconnected',
  };
}
