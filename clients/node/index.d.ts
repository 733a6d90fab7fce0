import type { IncomingMessage, Server, ServerResponse } from "node:http";

export const VERSION: string;
/** The route of requests no route matched. */
export const UNMATCHED: "<unmatched>";
/** The route that takes the requests of routes past `maxRoutes`. */
export const OVERFLOW: "<overflow>";
/** Upper bounds (ms) of the latency buckets 0..10 (PROTOCOL.md §4.1); bucket 11 is above. */
export const LATENCY_BOUNDS_MS: readonly number[];

export interface EmitterOptions {
  /** The service's name (an identifier, PROTOCOL.md §4.1), e.g. "checkout". */
  service: string;
  /** The daemon's UDP host; default "127.0.0.1". */
  host?: string;
  /** The daemon's UDP port; default 8470. */
  port?: number;
  /** This process; default `hostname:pid`. */
  instance?: string;
  /** The boot nonce; default 64 random bits in hex, new per process. */
  boot?: string;
  /** Time between samples; default 10,000 ms. */
  intervalMs?: number;
  /** (route, method) pairs kept before requests go to the `<overflow>` route; default 2,000. */
  maxRoutes?: number;
  /** Bytes per datagram; default 1,200. */
  budget?: number;
}

export interface MonitorOptions extends EmitterOptions {
  /** Bound of the last flush at close, SIGTERM or SIGINT; default 2,000 ms. */
  closeMs?: number;
  /** false: no SIGTERM/SIGINT/beforeExit hooks (call `close()` yourself). Default true. */
  exitFlush?: boolean;
}

export interface EmitterStats {
  requests: number;
  overflowRequests: number;
  samples: number;
  datagrams: number;
  dropped: number;
  errors: number;
}

export interface Emitter {
  readonly service: string;
  readonly instance: string;
  readonly boot: string;
  readonly stats: EmitterStats;
  readonly dirty: boolean;
  readonly routes: number;
  /** Count one completed request; `status` 0 when the client went away before a response. */
  record(route: string, method: string, status: number, bytesIn: number, bytesOut: number, ms: number): void;
  /** The `http` frames (JSON texts) of the streams that changed since their last sample (of all
   * when `all`, or every 30 s), each taking its next sequence number. */
  sample(ts?: number, all?: boolean): string[];
  /** Send a sample (of every stream when `all`); never rejects. */
  flush(all?: boolean): Promise<void>;
  close(timeoutMs?: number): Promise<void>;
}

type Next = (err?: unknown) => void;
type Handler = (req: IncomingMessage, res: ServerResponse) => unknown;

export interface Monitor {
  readonly emitter: Emitter;
  readonly stats: EmitterStats;
  /** Express/connect middleware; `app.use(monitor.express())` before anything else. */
  express(): (req: IncomingMessage, res: ServerResponse, next: Next) => void;
  /** A node:http request listener, counted. */
  wrap<H extends Handler>(handler: H): H;
  /** Count every request of an existing server. */
  instrument<S extends Server>(server: S): S;
  flush(): Promise<void>;
  close(): Promise<void>;
}

export function createMonitor(options: MonitorOptions): Monitor;
export function createEmitter(options: EmitterOptions): Emitter;
/** Name the route of a request yourself (a template, never the raw path). */
export function setRoute(req: IncomingMessage, template: string): void;
export function latencyBucket(ms: number): number;
export function wireId(s: unknown, fallback: string | null, max?: number): string | null;
export function wireMethod(method: string): string;
export function packJson(texts: Iterable<string>, budget?: number): Buffer[];
