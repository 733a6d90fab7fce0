// The call of the browser tests: two RTCPeerConnections in one page, "a" and "b", each sending
// the fake camera and microphone Chromium gives with --use-fake-device-for-media-stream, each
// with its own RTCConfiguration (direct, relayed through TURN, or relayed on one side only).
// Offers and answers carry every candidate (no trickle): the signalling is two function calls,
// and an ICE restart is one more negotiation.

const pcs = {};
// The page's own reads go around a getStats a test may have wrapped on the instance (to see
// the reports a monitor reads).
const report = (pc) => RTCPeerConnection.prototype.getStats.call(pc);

/** Resolves once `condition()` (sync or async) holds; rejects after 15 s: no test waits forever. */
async function until(condition, what) {
  const deadline = Date.now() + 15000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * A check that holds once `pc` has gathered its candidates: at the end-of-candidates event, or
 * 2 s after its first candidate on 127.0.0.1, whichever comes first. Chromium also gathers on the
 * machine's other addresses, where a TURN allocation towards 127.0.0.1 can take many seconds to
 * fail; only loopback candidates are signalled (`loopback`), and those come at once.
 */
function gathering(pc) {
  let done = false, firstLoopback = null;
  const end = (event) => {
    if (event.candidate === null) {
      done = true;
      pc.removeEventListener("icecandidate", end);
    } else if (firstLoopback === null && event.candidate.address === "127.0.0.1") {
      firstLoopback = Date.now();
    }
  };
  pc.addEventListener("icecandidate", end);
  return () => done || (firstLoopback !== null && Date.now() - firstLoopback > 2000);
}

/**
 * A description as signalled: its candidates on 127.0.0.1 only. Chromium also gathers the
 * machine's other addresses (IPv6, the LAN's); pairs on them would make which pair a side
 * selects depend on the machine, and traffic leave loopback.
 */
function loopback({ type, sdp }) {
  return { type, sdp: sdp.replace(/^a=candidate:\S+ \d+ \S+ \d+ (?!127\.0\.0\.1 ).*\r\n/gm, "") };
}

async function negotiate(offerer, answerer, options) {
  let gathered = gathering(offerer);
  await offerer.setLocalDescription(await offerer.createOffer(options));
  await until(gathered, "the offerer's candidates");
  await answerer.setRemoteDescription(loopback(offerer.localDescription));
  gathered = gathering(answerer);
  await answerer.setLocalDescription(await answerer.createAnswer());
  await until(gathered, "the answerer's candidates");
  await offerer.setRemoteDescription(loopback(answerer.localDescription));
}

const connected = () => Object.values(pcs).every((pc) => pc.connectionState === "connected");

/** The selected candidate pair's local and remote candidate types, as getStats reports them. */
export async function path(side) {
  const all = await report(pcs[side]);
  for (const stat of all.values()) {
    if (stat.type === "transport" && stat.selectedCandidatePairId) {
      const pair = all.get(stat.selectedCandidatePairId);
      const local = all.get(pair.localCandidateId);
      return {
        pair: pair.id,
        local: local.candidateType,
        remote: all.get(pair.remoteCandidateId).candidateType,
        relayProtocol: local.relayProtocol ?? null,
      };
    }
  }
  return null;
}

/** Media flows both ways: every inbound stream of both sides has received bytes. */
async function flowing() {
  for (const pc of Object.values(pcs)) {
    const inbound = [...(await report(pc)).values()].filter((s) => s.type === "inbound-rtp");
    if (inbound.length < 2 || inbound.some((s) => !(s.bytesReceived > 0))) return false;
  }
  return true;
}

/**
 * Starts the call and resolves once media flows both ways. `config` is
 * {a: RTCConfiguration, b: RTCConfiguration}.
 */
export async function start(config) {
  for (const side of ["a", "b"]) {
    const pc = new RTCPeerConnection(config[side]);
    const media = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: 320, height: 240, frameRate: 15 },
    });
    pcs[side] = pc;
    // A test instruments the connection here, before it negotiates (a monitor sees it all).
    await globalThis.onCallPeer?.(side, pc);
    for (const track of media.getTracks()) pc.addTrack(track, media);
  }
  await negotiate(pcs.a, pcs.b);
  await until(connected, "both sides connected");
  await until(flowing, "media both ways");
}

/** Every stats object of one side's getStats() report, as the browser gives them. */
export async function stats(side) {
  return [...(await report(pcs[side])).values()];
}

/**
 * An ICE restart after which side a, relayed so far, may also use host candidates (`configA`,
 * given with setConfiguration); resolves once both sides use a new pair with no relay at either
 * end. A restart keeps the ports it had: a relay-only side given "all" gains host candidates
 * and moves to the direct pair (the pairs the restart made with its relay come first, for a
 * moment), but a direct side given "relay" keeps its host pair (on loopback its host address
 * is the TURN relay's, which TURN permissions admit).
 */
export async function restartIce(configA) {
  const before = [(await path("a")).pair, (await path("b")).pair];
  const direct = async () => {
    const [a, b] = [await path("a"), await path("b")];
    const types = [a.local, a.remote, b.local, b.remote];
    return connected() && a.pair !== before[0] && b.pair !== before[1] && !types.includes("relay");
  };
  pcs.a.setConfiguration(configA);
  await negotiate(pcs.a, pcs.b, { iceRestart: true });
  await until(direct, "a direct pair on both sides");
}
