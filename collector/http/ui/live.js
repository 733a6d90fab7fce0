// The /subscribe client (PROTOCOL.md §12): one WebSocket, a state per topic (a Map of entity
// id → fields), snapshots and deltas applied by the rules of §12.5, resumed with (epoch, seq)
// after a lost connection (backoff with jitter).
//
// Messages are queued as they arrive and applied once per animation frame: a listener gets
// one batch per topic per frame (`full`: the state was replaced; `changed`, `removed`: ids;
// `alerts`: the alert messages), never one call per message. While the tab is hidden, frames
// do not run: the messages are applied every second without telling anyone, and the ids they
// touched gathered (at most one per entity), so that when the tab is shown again each
// listener gets one batch that catches up.

const HEARTBEAT_S = 15;
const MAX_ALERTS = 500;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000];

class Topic {
  constructor(name, listener) {
    this.name = name;
    this.listener = listener;
    this.state = new Map();
    this.epoch = null;
    this.seq = null;
    this.at = null; // daemon time of the last state applied
    this.asked = false; // a subscribe sent after a gap, not answered yet
    this.pending = newBatch();
  }
}

function newBatch() {
  return { full: false, changed: new Set(), removed: new Set(), alerts: [], dirty: false };
}

export class Live {
  /**
   * onStatus({ live, age, message }): live is false while (re)connecting; age is how old
   * the data is (s, since the last message); message says why when the daemon refused.
   * onRefused(detail): the daemon refused the token (or wants one).
   */
  constructor({ url, token = () => "", onStatus = () => {}, onRefused = () => {} } = {}) {
    this.url = url || `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/subscribe`;
    this.token = token;
    this.onStatus = onStatus;
    this.onRefused = onRefused;
    this.topics = new Map();
    this.queue = [];
    this.scheduled = 0;
    this.ws = null;
    this.live = false;
    this.attempt = 0;
    this.lastMessage = performance.now();
    this.refusedOnce = false;
    this.stopped = false;
    this.flush = this.flush.bind(this);
    this.tick = setInterval(() => this.watch(), 1000);
    document.addEventListener("visibilitychange", () => this.shown());
    this.connect();
  }

  /** Start a topic; `listener(batch, topic)` gets its batches. Returns the topic. */
  subscribe(name, listener) {
    let topic = this.topics.get(name);
    if (!topic) {
      topic = new Topic(name, listener);
      this.topics.set(name, topic);
      this.send(this.subscription(topic));
    } else {
      topic.listener = listener;
    }
    return topic;
  }

  unsubscribe(name) {
    if (this.topics.delete(name)) this.send({ t: "unsubscribe", topic: name });
  }

  /** A new token: present it and restart every topic where it stood. */
  authenticate() {
    this.refusedOnce = false;
    const value = this.token();
    if (value) this.send({ t: "auth", token: value });
    for (const topic of this.topics.values()) this.send(this.subscription(topic));
  }

  close() {
    this.stopped = true;
    clearInterval(this.tick);
    if (this.ws) this.ws.close(1000);
  }

  subscription(topic) {
    const message = { t: "subscribe", topic: topic.name };
    if (topic.epoch !== null && topic.seq !== null) {
      message.epoch = topic.epoch;
      message.seq = topic.seq;
    }
    return message;
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  connect() {
    if (this.stopped) return;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.refusedOnce = false;
      const value = this.token();
      if (value) ws.send(JSON.stringify({ t: "auth", token: value }));
      for (const topic of this.topics.values()) {
        topic.asked = false;
        ws.send(JSON.stringify(this.subscription(topic)));
      }
    };
    ws.onmessage = (event) => {
      this.lastMessage = performance.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!this.live && (message.t === "snapshot" || message.t === "delta")) {
        this.live = true;
        this.attempt = 0;
        this.status();
      }
      this.queue.push(message);
      this.schedule();
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const wasLive = this.live;
      this.live = false;
      this.status(event.code === 1008 ? "the token expired: enter a new one" : undefined);
      if (event.code === 1008) this.onRefused("the token expired");
      const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
      this.attempt += 1;
      const delay = wasLive ? 100 : base * (0.5 + Math.random() / 2);
      setTimeout(() => this.connect(), delay);
    };
  }

  /** Every second: the banner's age, and a connection that went silent is dropped. */
  watch() {
    const silentS = (performance.now() - this.lastMessage) / 1000;
    if (this.ws && this.live && silentS > 2 * HEARTBEAT_S) this.ws.close();
    if (!this.live) this.status();
    if (document.visibilityState === "hidden" && this.queue.length) this.flush();
  }

  age() {
    return (performance.now() - this.lastMessage) / 1000;
  }

  status(message) {
    this.onStatus({ live: this.live, age: this.age(), message });
  }

  schedule() {
    if (this.scheduled || document.visibilityState === "hidden") return;
    this.scheduled = requestAnimationFrame(this.flush);
  }

  shown() {
    if (document.visibilityState === "hidden") return;
    this.flush();
  }

  /** Apply what is queued; tell the listeners unless the tab is hidden. */
  flush() {
    this.scheduled = 0;
    const queue = this.queue;
    this.queue = [];
    for (const message of queue) this.apply(message);
    if (document.visibilityState === "hidden") return;
    for (const topic of this.topics.values()) {
      const batch = topic.pending;
      if (!batch.dirty) continue;
      topic.pending = newBatch();
      topic.listener(batch, topic);
    }
  }

  apply(message) {
    if (message.t === "error") return this.error(message);
    const topic = this.topics.get(message.topic);
    if (!topic) return;
    const batch = topic.pending;
    if (message.t === "snapshot") {
      if (topic.epoch === null) performance.mark(`bwmon:snapshot:${topic.name}`);
      topic.state = new Map(Object.entries(message.entities || {}));
      topic.asked = false;
      topic.epoch = message.epoch;
      topic.seq = message.seq;
      topic.at = message.at;
      batch.full = true;
      batch.changed.clear();
      batch.removed.clear();
      batch.dirty = true;
    } else if (message.t === "delta") {
      if (message.epoch === topic.epoch && message.seq <= topic.seq) return;
      if (message.epoch !== topic.epoch || message.prev !== topic.seq) {
        // A gap or another epoch: ask from where we stand, once until the answer comes.
        if (!topic.asked) this.send(this.subscription(topic));
        topic.asked = true;
        return;
      }
      topic.asked = false;
      for (const id of message.removed || []) {
        topic.state.delete(id);
        batch.changed.delete(id);
        batch.removed.add(id);
      }
      for (const [id, fields] of Object.entries(message.changed || {})) {
        const entity = topic.state.get(id);
        if (entity) Object.assign(entity, fields);
        else topic.state.set(id, { ...fields });
        batch.changed.add(id);
      }
      topic.seq = message.seq;
      topic.at = message.at;
      batch.dirty = true;
    } else if (message.t === "alert") {
      batch.alerts.push(message.alert);
      if (batch.alerts.length > MAX_ALERTS) batch.alerts.splice(0, batch.alerts.length - MAX_ALERTS);
      batch.dirty = true;
    }
  }

  error(message) {
    if (message.code === "unauthorized" || message.code === "forbidden") {
      if (this.refusedOnce) return;
      this.refusedOnce = true;
      this.onRefused(message.detail || message.code);
    }
  }
}
