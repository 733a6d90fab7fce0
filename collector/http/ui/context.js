// What the views share: the live connection, and the alerts feed (kept while any view
// shows, capped so that the page holds no unbounded history).

export const MAX_FEED = 500;

export const shared = {
  live: null, // the Live of live.js
  feed: [], // alert events (raised or cleared), newest first, at most MAX_FEED
  feedKeys: new Set(),
  feedListeners: new Set(),
};

/** The entities of a topic the page holds (an empty Map when it holds none). */
export function topicState(name) {
  return shared.live?.topics.get(name)?.state ?? new Map();
}

/** Add alert events (oldest first) to the feed; returns those that were new. */
export function addToFeed(events) {
  const fresh = [];
  const seen = new Set();
  for (const alert of events) {
    const key = feedKey(alert);
    if (shared.feedKeys.has(key) || seen.has(key)) continue;
    seen.add(key);
    fresh.push(alert);
  }
  const added = fresh.length > MAX_FEED ? fresh.slice(-MAX_FEED) : fresh;
  if (!added.length) return added;
  for (const alert of added) shared.feedKeys.add(feedKey(alert));
  shared.feed.unshift(...[...added].reverse());
  shared.feed.sort((a, b) => eventTime(b) - eventTime(a));
  while (shared.feed.length > MAX_FEED) shared.feedKeys.delete(feedKey(shared.feed.pop()));
  for (const listener of shared.feedListeners) listener(added);
  return added;
}

function feedKey(alert) {
  return `${alert.id}|${alert.state}`;
}

export function eventTime(alert) {
  return alert.state === "cleared" ? alert.at ?? alert.cleared_at ?? 0 : alert.raised_at ?? alert.at ?? 0;
}
