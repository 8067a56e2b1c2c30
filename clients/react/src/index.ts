// @roomcast/react: React bindings for roomcast, on top of its browser client
// (./client.js, a copy of the server's /client.js: one protocol
// implementation, not two).

export { RoomcastClient, Subscription } from './client.js';
export type {
  ClientError,
  ClientEvents,
  ClientOptions,
  ClientState,
  Counts,
  Member,
  Message,
  Mode,
  PresenceChange,
  ReconnectInfo,
  RoomEvent,
  RoomStatus,
  Snapshot,
  Source,
  Status,
  SubscribeOptions,
  SubscriptionEvents,
  Transport,
} from './client.js';

export { RoomcastProvider, useRoomcast } from './provider.js';
export type { ProviderClientOptions, RoomcastProviderProps, TokenSource } from './provider.js';

export { useConnection, usePresence, useRoom } from './useRoom.js';
export type { UsePresenceResult, UseRoomOptions, UseRoomResult } from './useRoom.js';
export type { ResetInfo, RoomData } from './hub.js';

export { useRooms } from './useRooms.js';
export type { UseRoomsOptions, UseRoomsResult } from './useRooms.js';
export { applyRoomFrame, matchesFilter } from './roomList.js';
export type { RoomFrame, RoomInfo, RoomListKind, RoomListOptions, RoomsFilter } from './roomList.js';
