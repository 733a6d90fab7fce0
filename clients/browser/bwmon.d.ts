// Types of bwmon.js (the browser client). One section per section of bwmon.js.

// ---- quality ----

// ---- monitor ----

/** Where the daemon is: its base URL (`https://bwmon.example.com`, `http://127.0.0.1:8470`,
 * with a path prefix behind a proxy) or its WebSocket ingest URL (`wss://host/ingest`). Either
 * gives both the WebSocket URL (`…/ingest`, ws/wss) and the last flush's `POST …/ingest`. */
export interface MonitorOptions {
  /** The daemon; leave it out to only compute the local view (onSample), sending nothing. */
  url?: string;
  /** An access token with the `ingest` right (PROTOCOL.md §13), sent in the hello only; a
   * function is asked for the current one at each (re)connection. */
  token?: string | (() => string);
  /** The application's meeting (room) id: 1–128 printable characters, no whitespace. */
  meeting: string;
  /** The application's participant id, as opaque as the meeting's. */
  participant: string;
  /** Milliseconds between two samples; default 2000. */
  intervalMs?: number;
  /** Most frames kept while the daemon is unreachable; default 1000 (oldest dropped first). */
  maxQueue?: number;
}

export interface AddOptions {
  /** The connection id `c` of its frames; default a random one. */
  connection?: string;
}

export interface MonitorStats {
  /** Frames written to the WebSocket or the last flush's POST (resent ones again). */
  sent: number;
  /** Frames the daemon acknowledged (PROTOCOL.md §7.5). */
  acked: number;
  /** Frames dropped unsent because the queue was full. */
  dropped: number;
  /** Frames the daemon rejected (error replies and acks' counts). */
  rejected: number;
  /** WebSocket sessions lost and tried again. */
  reconnects: number;
  /** Frames waiting: unsent, or sent and not yet acknowledged. */
  queued: number;
  /** A WebSocket session is open (its welcome came). */
  connected: boolean;
  /** The last problem seen (a rejection, a close, an exception), or null. */
  lastError: string | null;
  /** Peer connections sampled. */
  connections: number;
  /** The last tick: milliseconds waiting for getStats(), and of the client's own work. */
  getStatsMs: number;
  workMs: number;
}

export type EventKind = "join" | "leave" | "ice" | "reconnect" | "mute" | "unmute";

export interface Monitor {
  /** Sample this peer connection every tick until remove(pc), close() or the pc closes. */
  add(pc: RTCPeerConnection, options?: AddOptions): void;
  /** Take a last sample of pc, then stop sampling it. */
  remove(pc: RTCPeerConnection): Promise<void>;
  /** Send an `event` frame; detail is its `val`, or the value and the peer connection. */
  event(kind: EventKind, detail?: string | { value?: string; connection?: RTCPeerConnection }): void;
  /** Each tick's local view of all connections (quality section), for an in-call indicator;
   * returns a function that unsubscribes. */
  onSample(callback: (view: CombinedView) => void): () => void;
  /** Add every RTCPeerConnection made from now on (wraps window.RTCPeerConnection once per
   * page, whatever the number of monitors or copies of this module); false if not possible. */
  wrap(): boolean;
  stats(): MonitorStats;
  /** A last sample of every connection, a `leave`, everything unsent flushed: within 2 s. */
  close(): Promise<void>;
}

export function createMonitor(options: MonitorOptions): Monitor;


// ---- indicator ----
