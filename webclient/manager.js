// The connection manager: the top page of every <device>--<service> origin.
//
// It reads the device and service from the host name, registers the service worker, connects
// to the device over WebRTC (signaling -> ICE -> data channel) and opens the app in a frame at
// the path the page was opened with. The frame's requests reach us through the worker (relay.js)
// and travel over the one data channel of this visit; navigations inside the frame reuse it.
// When the connection drops, the page says so and reconnects; the frame stays.

import { PeerLink } from "./link.js";
import { isLocalAddress, parseHost } from "./origin.js";
import { Relay } from "./relay.js";
import { Signaling, SignalingError } from "./signaling.js";
import { startWebSocketBridge } from "./wsbridge.js";

const CONNECT_TIMEOUT = 15_000; // offer -> data channel open
const ANSWER_TIMEOUT = 10_000;
const BACKOFF_MIN = 500;
const BACKOFF_MAX = 10_000;
const SANDBOX = "allow-scripts allow-same-origin allow-forms allow-popups allow-modals allow-downloads";

const $ = (id) => document.getElementById(id);
const ui = {
  title: $("title"),
  status: $("status"),
  barDetail: $("bar-detail"),
  path: $("path"),
  rtt: $("rtt"),
  card: $("card"),
  heading: $("heading"),
  message: $("message"),
  detail: $("detail"),
  steps: [...document.querySelectorAll("#steps li")],
  stage: $("stage"),
};

// ----- the page's state, shown in the bar and the card

const STEPS = ["signaling", "ice", "channel", "loading"];
const state = {
  phase: "starting",
  step: "signaling", // the last connection step reached
  connections: 0, // peer connections made in this visit
  portsOffered: 0, // MessagePorts handed to the service worker (again after it restarts)
  attempts: 0,
  lastError: "",
  link: null,
  pc: null,
  pathText: "",
  everConnected: false,
};
window.__peerproxy = state; // for the curious (and the tests): read-only by convention

const LOST = "Connection lost — reconnecting…";
const STEP_TEXT = {
  signaling: "Contacting the device…",
  ice: "Finding a network path…",
  channel: "Channel open",
};

/** A step of connecting: shown as such the first time, as detail of "lost" afterwards. */
function step(phase) {
  if (state.everConnected) setPhase("lost", LOST, STEP_TEXT[phase] ?? "");
  else setPhase(phase);
}

function setPhase(phase, message = "", detail = "") {
  state.phase = phase;
  document.body.dataset.phase = phase;
  if (STEPS.includes(phase)) state.step = phase;
  const problem = ["offline", "failed", "invalid", "unreachable", "unknown-service"].includes(phase);
  // On a problem, the step we were at is the one that failed.
  const stepIndex = STEPS.indexOf(problem ? state.step : phase);
  ui.steps.forEach((li, i) => {
    li.classList.toggle("done", phase === "connected" || (stepIndex >= 0 && i < stepIndex));
    li.classList.toggle("active", !problem && i === stepIndex);
    li.classList.toggle("failed", problem && i === stepIndex);
  });
  const texts = { ...STEP_TEXT, starting: "Starting…", loading: "Loading…", connected: "Connected" };
  ui.status.textContent = message || texts[phase] || phase;
  ui.message.textContent = message;
  ui.detail.textContent = detail;
  document.body.classList.toggle("problem", problem);
  document.body.classList.toggle("lost", phase === "lost");
  // The card covers the frame until the app is there; afterwards the bar speaks alone.
  ui.card.hidden = state.everConnected && !["invalid", "unknown-service"].includes(phase);
  ui.barDetail.textContent = ui.card.hidden ? detail : "";
}

// ----- service worker

async function startWorker(relay) {
  if (!("serviceWorker" in navigator)) {
    throw new Error("This browser has no service workers (or this page is not a secure context).");
  }
  const registration = await navigator.serviceWorker.register("/__peerproxy/sw.js", {
    scope: "/",
    updateViaCache: "none",
  });
  await navigator.serviceWorker.ready;
  const worker = () => registration.active;
  const offerPort = () => {
    const channel = new MessageChannel();
    channel.port1.onmessage = (e) => {
      if (e.data?.type === "fetch") relay.handle(e.data, e.ports[0]);
    };
    worker().postMessage({ type: "manager" }, [channel.port2]);
    state.portsOffered += 1;
  };
  offerPort();
  // A restarted worker has lost its ports and asks for a new one.
  navigator.serviceWorker.addEventListener("message", (e) => {
    if (e.data?.type === "need-port") offerPort();
  });
  navigator.serviceWorker.startMessages();
  registration.addEventListener("updatefound", () => {
    const next = registration.installing;
    next?.addEventListener("statechange", () => {
      if (next.state === "activated") offerPort();
    });
  });
  addEventListener("pagehide", () => worker()?.postMessage({ type: "manager-gone" }));
}

// ----- the connection

function iceConfig() {
  return fetch("/__peerproxy/config.json", { cache: "no-cache" })
    .then((r) => (r.ok ? r.json() : {}))
    .catch(() => ({}));
}

function candidateSummary(sdp) {
  const found = [];
  for (const line of (sdp || "").split(/\r?\n/)) {
    const m = /^a=candidate:\S+ \d+ \S+ \d+ (\S+) (\d+) typ (\S+)/.exec(line);
    if (m) found.push(`${m[3]} ${m[1]}:${m[2]}`);
  }
  return found;
}

async function connectOnce(target, signaling, config) {
  step("signaling");
  await signaling.ready();
  // ICE servers: the signaling server's (its hello), else config.json's, else none.
  const iceServers = signaling.iceServers ?? config.iceServers ?? [];
  const pc = new RTCPeerConnection({ iceServers });
  state.pc = pc;
  const local = [];
  try {
    const channel = pc.createDataChannel("peerproxy", { ordered: true });
    pc.addEventListener("icecandidate", (e) => {
      if (!e.candidate) return;
      local.push(e.candidate.candidate);
      try {
        signaling.send({ type: "candidate", to: target.device, payload: e.candidate.toJSON() });
      } catch {
        // signaling dropped: the answer wait fails on its own
      }
    });
    await pc.setLocalDescription(await pc.createOffer());
    const answered = signaling.waitAnswer(target.device, ANSWER_TIMEOUT);
    signaling.send({ type: "offer", to: target.device, payload: { sdp: pc.localDescription.sdp, type: "offer" } });
    const answer = await answered;
    step("ice");
    await pc.setRemoteDescription({ type: "answer", sdp: String(answer.sdp) });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => fail("no network path found in time"), CONNECT_TIMEOUT);
      const fail = (why) => {
        clearTimeout(timer);
        const ours = local.map((c) => c.split(" ").slice(4, 6).join(":") + " (" + c.split(" ")[7] + ")");
        const theirs = candidateSummary(answer.sdp);
        const error = new Error(`Could not connect to ${target.device}: ${why}.`);
        error.kind = "failed";
        error.detail = `Tried this browser's ${ours.length ? ours.join(", ") : "addresses (none gathered)"}` +
          ` with the device's ${theirs.length ? theirs.join(", ") : "addresses (none offered)"}` +
          `${iceServers.length ? "" : "; no STUN/TURN server is configured"}.`;
        reject(error);
      };
      channel.addEventListener("open", () => {
        clearTimeout(timer);
        resolve();
      });
      pc.addEventListener("connectionstatechange", () => {
        if (pc.connectionState === "failed") fail("the connection checks failed");
      });
    });
    step("channel");
    state.connections += 1;
    // ms since this page's navigation started (performance.timeOrigin): the setup time.
    state.channelOpenAt = performance.now();
    return { pc, channel };
  } catch (exc) {
    pc.close();
    state.pc = null;
    throw exc;
  }
}

async function describePath(pc) {
  try {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) {
      stats.forEach((s) => {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
      });
    }
    if (!pair) return "";
    const local = stats.get(pair.localCandidateId) ?? {};
    const remote = stats.get(pair.remoteCandidateId) ?? {};
    if (local.candidateType === "relay" || remote.candidateType === "relay") return "relayed (TURN)";
    // Peer-reflexive candidates are addresses learnt from the checks themselves: on a LAN
    // (or loopback) they are private addresses, through NAT public ones.
    if (isLocalAddress(remote.address ?? remote.ip)) return "direct (LAN)";
    return "direct, through NAT";
  } catch {
    return "";
  }
}

function showRtt() {
  const rtt = state.link?.rtt;
  ui.rtt.textContent = rtt == null ? "" : `RTT ${rtt < 10 ? rtt.toFixed(1) : Math.round(rtt)} ms`;
}

function createFrame() {
  const frame = document.createElement("iframe");
  frame.id = "app";
  frame.name = "app";
  frame.title = "app";
  frame.setAttribute("sandbox", SANDBOX);
  frame.setAttribute("allow", "fullscreen; clipboard-write");
  frame.addEventListener("load", () => {
    if (state.phase === "loading") {
      state.everConnected = true;
      setPhase("connected");
    }
    try {
      const title = frame.contentDocument?.title;
      document.title = title ? `${title} · ${state.label}` : state.label;
    } catch {
      document.title = state.label;
    }
  });
  // Deep links: the frame opens at the path this page was opened with.
  frame.src = location.pathname + location.search + location.hash;
  ui.stage.append(frame);
  return frame;
}

async function run() {
  const target = parseHost(location.hostname);
  if (!target) {
    ui.title.textContent = location.hostname;
    setPhase(
      "invalid",
      "This address names no device.",
      "Open https://<device>--<service>.<signaling host>/, for example camera-pi--camera.",
    );
    return;
  }
  state.label = `${target.device} · ${target.service}`;
  ui.title.textContent = state.label;
  ui.heading.textContent = state.label;
  document.title = state.label;

  const relay = new Relay(target.service, {
    describeOutage: () => `not connected to ${target.device}: ${state.lastError || state.phase}`,
    onResponse: (info) => {
      const error = info.headers.some(([n]) => n.toLowerCase() === "x-peerproxy-error");
      if (error && info.status === 404 && info.destination === "iframe") {
        setPhase("unknown-service", `${target.device} has no service “${target.service}”.`);
      }
    },
  });
  state.relay = relay;
  startWebSocketBridge(relay);
  try {
    await startWorker(relay);
  } catch (exc) {
    setPhase("failed", "This browser cannot run the viewer.", exc.message);
    return;
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const config = await iceConfig();
  const signaling = new Signaling(config.signalingUrl ?? `${scheme}//${location.host}/ws`);
  let frame = null;
  let delay = BACKOFF_MIN;
  setInterval(async () => {
    showRtt();
    if (state.phase === "connected" && state.pc) {
      const path = await describePath(state.pc);
      ui.path.textContent = path;
      state.pathText = path;
    }
  }, 1000);

  for (;;) {
    state.attempts += 1;
    let pc;
    let channel;
    try {
      ({ pc, channel } = await connectOnce(target, signaling, config));
    } catch (exc) {
      state.lastError = exc.message;
      if (state.everConnected) {
        const why = exc instanceof SignalingError && exc.code === "device-offline"
          ? `${target.device} is offline.` : exc.message;
        setPhase("lost", LOST, why);
      } else if (exc instanceof SignalingError && exc.code === "device-offline") {
        setPhase("offline", `${target.device} is offline.`, "Waiting for it to come online…");
      } else if (exc instanceof SignalingError && exc.code === "unreachable") {
        setPhase("unreachable", "Cannot reach the signaling server.", "Retrying…");
      } else if (exc instanceof SignalingError) {
        setPhase("failed", `${target.device} refused the connection: ${exc.message}`, "Retrying…");
      } else {
        setPhase("failed", exc.message, exc.detail ?? "Retrying…");
      }
      await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random() / 2)));
      delay = Math.min(delay * 2, BACKOFF_MAX);
      continue;
    }
    delay = BACKOFF_MIN;
    let lost;
    const closed = new Promise((resolve) => {
      lost = resolve;
    });
    const link = new PeerLink(channel, { onClose: (reason) => lost(reason) });
    pc.addEventListener("connectionstatechange", () => {
      if (["failed", "closed"].includes(pc.connectionState)) link.close(`connection ${pc.connectionState}`);
    });
    state.link = link;
    relay.setLink(link);
    describePath(pc).then((path) => {
      ui.path.textContent = path;
      state.pathText = path;
    });
    if (!frame) {
      setPhase("loading");
      frame = createFrame();
    } else {
      setPhase("connected", state.connections > 1 ? "Reconnected" : "Connected");
    }
    const reason = await closed;
    relay.setLink(null);
    state.link = null;
    pc.close();
    state.pc = null;
    state.lastError = reason;
    ui.path.textContent = "";
    ui.rtt.textContent = "";
    setPhase("lost", "Connection lost — reconnecting…", reason);
  }
}

run();
