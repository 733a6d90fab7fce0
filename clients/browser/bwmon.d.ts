// Types of bwmon.js (the browser client). One section per section of bwmon.js.

// ---- adapter ----

type CandidateType = "host" | "srflx" | "prflx" | "relay";

/**
 * The wire fields of one `rtc` frame (protocol/PROTOCOL.md §4.3) read from one getStats()
 * report: each present only when the report has its source and the value fits its wire type
 * (integer counters as integers, every value in its §5.1 range). Counters are summed over all
 * RTP streams of their kind and direction. Never `t`, `m`, `p`, `c`, `q` or `boot`.
 */
export interface RtcFields {
  /** The latest `timestamp` of the report's local stats, ms since the Unix epoch. */
  ts?: number;
  aob?: number; aop?: number; aib?: number; aip?: number; ail?: number; arl?: number;
  vob?: number; vop?: number; vib?: number; vip?: number; vil?: number; vrl?: number;
  /** Seconds (a float), summed like the counters. */
  ajd?: number;
  aje?: number; acs?: number; ass?: number; ats?: number;
  vfd?: number; vfx?: number; vzc?: number;
  /** Seconds (a float), summed like the counters. */
  vzd?: number;
  /** The selected candidate pair's bytes; they restart with `pair`. */
  pbs?: number; pbr?: number;
  /** ms: the largest `remote-inbound-rtp` RTT, else the selected pair's. */
  rtt?: number;
  /** ms: the largest jitter of the streams of the kind. */
  aj?: number; vj?: number;
  /** fps and pixels of the stream with the largest frame, in and out. */
  vfi?: number; vfo?: number; vwi?: number; vhi?: number; vwo?: number; vho?: number;
  /** bits/s, the selected pair's `availableOutgoingBitrate`. */
  bwe?: number;
  /** The most severe limitation of the video senders. */
  qlr?: "none" | "cpu" | "bandwidth" | "other";
  /** An audio sender uses Opus in-band FEC or RED. */
  fec?: boolean;
  /** The selected pair's candidate types, present together. */
  lct?: CandidateType; rct?: CandidateType;
  /** Only while `lct` is `relay`: the transport to the TURN server and its URL as reported. */
  rp?: "udp" | "tcp" | "tls";
  turn?: string;
  /** The selected candidate pair's id. */
  pair?: string;
}

/** `rtcFields(await pc.getStats())`: pure, no state, no clock. */
export function rtcFields(report: RTCStatsReport | ReadonlyMap<string, any>): RtcFields;

// ---- quality ----

/** The quality level of a score (collector/aggregate/quality.py `level`), best first. */
export type Level = "excellent" | "good" | "fair" | "poor" | "bad";

/** Why a call is poor, always listed in this order (the daemon's `REASONS`). */
export type Reason = "loss" | "rtt" | "jitter" | "bitrate" | "cpu" | "relay-tcp" | "freeze";

/** Bits per second of one direction, per kind. */
export interface Bitrates {
  audio: number;
  video: number;
}

/**
 * The page's own view of one interval between two samples of a connection, computed with the
 * daemon's formulas (`localView`); null where a value is not known for the interval.
 */
export interface LocalView {
  /** The newer sample's `ts` (ms since the Unix epoch). */
  ts: number;
  /** Seconds between the two samples. */
  seconds: number;
  /** Sent, bits/s (RTP bytes, headers excluded). */
  up: Bitrates;
  /** Received, bits/s. */
  down: Bitrates;
  /** Share of the packets lost on the way in, 0..1 (audio and video). */
  lossDown: number | null;
  /** Share of the packets sent that the peer reports lost, 0..1. */
  lossUp: number | null;
  /** Round-trip time, ms. */
  rtt: number | null;
  /** Audio jitter (video jitter without audio), ms. */
  jitter: number | null;
  /** Audio mean opinion score, 1..4.5; null when no audio was received. */
  mos: number | null;
  /** Video score, 0..100; null when no video was received. */
  video: number | null;
  /** Smoothed quality score, 0..100: the previous one when nothing was received. */
  score: number | null;
  level: Level | null;
  reasons: Reason[];
  /** This client's media goes through TURN. */
  relayed: boolean;
  /** The transport to the TURN server while relayed. */
  relayProtocol: "udp" | "tcp" | "tls" | null;
  /** The peer relays, this client does not. */
  remoteRelayed: boolean;
}

/** A participant's view over all its peer connections (`combineViews`). */
export interface CombinedView extends LocalView {
  /** The views combined, one per connection. */
  connections: LocalView[];
}

/**
 * The view of the interval from `prev` to `cur`, two consecutive samples of one connection as
 * `rtcFields` returns them; null for a first sample (`prev` null) or no time between them.
 * `prevScore`: the previous view's `score` (null at first), for the smoothing. A gauge absent
 * from `cur` keeps `prev`'s: pass as `prev` the samples so far merged (`{...last, ...cur}`) to
 * keep what several samples omit, as the daemon does.
 */
export function localView(
  prev: { ts: number; [key: string]: unknown } | null,
  cur: { ts: number; [key: string]: unknown },
  prevScore: number | null,
): LocalView | null;

/**
 * One view of several connections' views: bitrates summed; the worst loss, RTT, jitter, MOS,
 * video score and score; every reason; relayed if any is. Null entries are skipped; null if
 * none is left.
 */
export function combineViews(views: Array<LocalView | null>): CombinedView | null;

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

/** This client's version, as its hello's `agent` says: `bwmon-js/<VERSION>`. */
export const VERSION: string;


// ---- indicator ----

/** The indicator's one line for a view: bitrates, RTT, loss, relay, reasons; "–" for null. */
export function indicatorText(view: LocalView | null): string;

/**
 * `<bwmon-indicator>`: a coloured dot for the level and `indicatorText`, in a shadow root
 * (parts `dot` and `text` for styling). Defined when the module is imported in a page.
 *
 *     const el = document.createElement("bwmon-indicator");
 *     monitor.onSample((view) => (el.view = view));
 */
export interface BwmonIndicator extends HTMLElement {
  view: LocalView | null;
}

declare global {
  interface HTMLElementTagNameMap {
    "bwmon-indicator": BwmonIndicator;
  }
}
