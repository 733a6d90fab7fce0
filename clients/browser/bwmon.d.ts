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
