// The connection manager: the top page of every <device>--<service> origin.
//
// It reads the device and service from the host name, registers the service worker, connects
// to the device over WebRTC (signaling -> ICE -> data channel) and opens the app in a frame at
// the path the page was opened with. The frame's requests reach us through the worker (relay.js)
// and travel over the one data channel of this visit; navigations inside the frame reuse it.
// When the connection drops, the page says so and reconnects; the frame stays.
//
// Trust (docs/security.md 1.3, 1.5; access.js): the page is opened with a share link whose
// fragment carries the viewer's name, token and the device's pinned DTLS fingerprint. The
// fragment leaves the address bar before anything else happens. Every connection checks the
// answer's fingerprint against the pinned one before it is used, then sends the viewer's auth
// as the first data-channel message; only after the device's auth-ok does the packet protocol
// start and do the worker's requests go through.

import { NoCredential, authenticate, loadCredential, takeLinkFromAddressBar } from "./access.js";
import { PeerLink } from "./link.js";
import { isLocalAddress, parseHost } from "./origin.js";
import { Relay } from "./relay.js";
import { SignIn } from "./signin.js";
import { Signaling, SignalingError } from "./signaling.js";
import { AuthError, FingerprintError, authProblem, checkPinned, parseAuthReply, sdpFingerprint } from "./trust.js";
import { startWebSocketBridge } from "./wsbridge.js";

// First of all: the secret part of the link leaves the address bar (and history).
const linkHref = takeLinkFromAddressBar();

const CONNECT_TIMEOUT = 15_000; // offer -> data channel open
const ANSWER_TIMEOUT = 10_000;
const AUTH_TIMEOUT = 10_000; // auth sent -> auth-ok or auth-error
const RESTART_TIMEOUT = 8_000; // ICE restart offer -> connected again, else a new connection
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
  viewer: $("viewer"),
  card: $("card"),
  heading: $("heading"),
  message: $("message"),
  detail: $("detail"),
  help: $("help"),
  steps: [...document.querySelectorAll("#steps li")],
  stage: $("stage"),
};

// ----- the page's state, shown in the bar and the card

const STEPS = ["signaling", "identity", "ice", "access", "loading"];
// Problems that waiting does not fix: the page stops connecting and says what to do.
const FINAL = ["invalid", "unknown-service", "nolink", "badlink", "mismatch", "unauthorized", "revoked", "expired"];
const PROBLEMS = [...FINAL, "offline", "failed", "unreachable", "full"];
const state = {
  phase: "starting",
  step: "signaling", // the last connection step reached
  connections: 0, // peer connections made in this visit
  iceRestarts: 0, // ICE restarts completed on them (docs/network.md, "Network changes")
  portsOffered: 0, // MessagePorts handed to the service worker (again after it restarts)
  attempts: 0,
  lastError: "",
  link: null,
  pc: null,
  pathText: "",
  everConnected: false,
  viewer: null, // the name the device granted access to, and until when (ISO 8601 or null)
  expires: null,
};
window.__peerproxy = state; // for the curious (and the tests): read-only by convention

const LOST = "Connection lost — reconnecting…";
const STEP_TEXT = {
  signaling: "Contacting the device…",
  identity: "Checking the device's identity…",
  ice: "Finding a network path…",
  access: "Presenting this browser's access key…",
};

/** A step of connecting: shown as such the first time, as detail of "lost" afterwards. */
function step(phase) {
  if (state.everConnected) setPhase("lost", LOST, STEP_TEXT[phase] ?? "");
  else setPhase(phase);
}

/**
 * Extra lines under the card's message: strings are paragraphs, {code} a line of code, an
 * array one paragraph of both. Cleared by every setPhase.
 */
function showHelp(...blocks) {
  ui.help.replaceChildren(
    ...blocks.map((block) => {
      const p = document.createElement("p");
      for (const part of [block].flat()) {
        if (typeof part === "string") p.append(part);
        else {
          const code = document.createElement("code");
          code.textContent = part.code;
          p.append(code);
        }
      }
      return p;
    }),
  );
}

function setPhase(phase, message = "", detail = "") {
  state.phase = phase;
  document.body.dataset.phase = phase;
  if (STEPS.includes(phase)) state.step = phase;
  const problem = PROBLEMS.includes(phase);
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
  ui.help.replaceChildren();
  document.body.classList.toggle("problem", problem);
  document.body.classList.toggle("lost", phase === "lost");
  // The card covers the frame until the app is there; afterwards the bar speaks alone.
  ui.card.hidden = state.everConnected && !FINAL.includes(phase);
  ui.barDetail.textContent = ui.card.hidden ? detail : "";
}

// ----- service worker

/** A User Timing mark of the connection's progress ("peerproxy:<what>"; bench/reload.py reads them). */
function mark(what) {
  performance.mark(`peerproxy:${what}`);
}

async function startWorker(relay, signIn) {
  if (!("serviceWorker" in navigator)) {
    throw new Error("This browser has no service workers (or this page is not a secure context).");
  }
  const registration = await navigator.serviceWorker.register("/__peerproxy/sw.js", {
    scope: "/",
    updateViaCache: "none",
  });
  await navigator.serviceWorker.ready;
  mark("worker-ready");
  const worker = () => registration.active;
  const offerPort = () => {
    const channel = new MessageChannel();
    channel.port1.onmessage = (e) => {
      if (e.data?.type === "fetch") relay.handle(e.data, e.ports[0]);
      if (e.data?.type === "basic-auth") signIn.ask(e.data).then((reply) => e.ports[0].postMessage(reply));
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

/** An Error that the page shows with `kind` as its phase (see describeFailure). */
function failure(kind, message, detail) {
  const error = new Error(message);
  error.kind = kind;
  error.detail = detail;
  return error;
}

async function connectOnce(target, signaling, config, credential) {
  step("signaling");
  await signaling.ready();
  mark("signaling-ready");
  // ICE servers: the signaling server's (its hello), else config.json's, else none.
  const iceServers = signaling.iceServers ?? config.iceServers ?? [];
  // Always this visit's certificate: the precomputed MAC covers its fingerprint (access.js).
  const pc = new RTCPeerConnection({ iceServers, certificates: [credential.certificate] });
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
    if (sdpFingerprint(pc.localDescription.sdp) !== credential.viewerFp) {
      throw failure("failed", "This browser did not use the viewer's certificate for the connection.");
    }
    const answered = signaling.waitAnswer(target.device, ANSWER_TIMEOUT);
    signaling.send({ type: "offer", to: target.device, payload: { sdp: pc.localDescription.sdp, type: "offer" } });
    mark("offer-sent");
    const answer = await answered;
    mark("answer");
    // The device's identity, before the answer is used at all: a wrong fingerprint means the
    // signaling server (or the network) answered in the device's place.
    step("identity");
    try {
      checkPinned(String(answer.sdp), credential.pinned);
    } catch (exc) {
      if (!(exc instanceof FingerprintError)) throw exc;
      const error = failure(
        "mismatch",
        "The device's identity does not match the link.",
        "The answer came with another certificate than the one the link pins: the signaling " +
          "server or the network tried to intercept the connection. Nothing was sent to it.",
      );
      error.help = [["The device answered with ", { code: exc.got }], ["The link pins ", { code: exc.pinned }]];
      throw error;
    }
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
    // ms since this page's navigation started (performance.timeOrigin): the setup time.
    state.channelOpenAt = performance.now();
    mark("channel-open");
    step("access");
    const granted = await authenticate(channel, credential, AUTH_TIMEOUT);
    if (granted.service !== target.service) {
      throw new AuthError(
        "wrong-service",
        `this link's viewer “${granted.viewer}” may use ${granted.service}, not ${target.service}`,
      );
    }
    state.connections += 1;
    return { pc, channel, granted };
  } catch (exc) {
    pc.close();
    state.pc = null;
    throw exc;
  }
}

/**
 * Restart ICE on the live connection (the device asked: its addresses changed; or our ICE
 * went disconnected/failed): new credentials and candidates, the same DTLS association, so
 * the data channel and every request in flight go on. Rejects if the connection is not back
 * within RESTART_TIMEOUT; the caller then makes a new connection.
 */
async function restartIce(pc, target, signaling, credential) {
  pc.restartIce();
  await pc.setLocalDescription(await pc.createOffer());
  const answered = signaling.waitAnswer(target.device, ANSWER_TIMEOUT);
  signaling.send({ type: "offer", to: target.device, payload: { sdp: pc.localDescription.sdp, type: "offer" } });
  const answer = await answered;
  checkPinned(String(answer.sdp), credential.pinned);
  await pc.setRemoteDescription({ type: "answer", sdp: String(answer.sdp) });
  const ufrag = /a=ice-ufrag:(\S+)/.exec(pc.localDescription.sdp)?.[1];
  const deadline = performance.now() + RESTART_TIMEOUT;
  while (!(await selectedWith(pc, ufrag))) {
    if (performance.now() > deadline) throw new Error("ICE restart did not complete in time");
    await new Promise((r) => setTimeout(r, 100));
  }
  state.iceRestarts += 1;
}

/** Whether ICE has selected a pair of the generation with local ufrag `ufrag` (browsers that
 * do not report the transport's ufrag: whether ICE is connected at all). */
async function selectedWith(pc, ufrag) {
  const stats = await pc.getStats();
  let found = false;
  stats.forEach((s) => {
    if (s.type !== "transport" || !s.selectedCandidatePairId) return;
    const ours = s.iceLocalUsernameFragment === undefined || s.iceLocalUsernameFragment === ufrag;
    const up = s.iceState === undefined || ["connected", "completed"].includes(s.iceState);
    if (ours && up) found = true;
  });
  return found && ["connected", "completed"].includes(pc.iceConnectionState);
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

/** What the page says about a failed attempt: {phase, message, detail, final}. */
function describeFailure(exc, target, credential) {
  if (exc instanceof AuthError) {
    const p = authProblem(exc, { service: target.service, name: credential.name });
    return { ...p, step: "access", final: !p.retry };
  }
  if (exc.kind === "mismatch") {
    return { phase: "mismatch", message: exc.message, detail: exc.detail, help: exc.help, step: "identity", final: true };
  }
  if (exc instanceof SignalingError && exc.code === "device-offline") {
    return { phase: "offline", message: `${target.device} is offline.`, detail: "Waiting for it to come online…" };
  }
  if (exc instanceof SignalingError && exc.code === "unreachable") {
    return { phase: "unreachable", message: "Cannot reach the signaling server.", detail: "Retrying…" };
  }
  if (exc instanceof SignalingError) {
    return { phase: "failed", message: `${target.device} refused the connection: ${exc.message}`, detail: "Retrying…" };
  }
  return { phase: "failed", message: exc.message, detail: exc.detail ?? "Retrying…" };
}

/** The card for a missing or broken link: how to get a working one. */
function showNoCredential(exc, target) {
  if (exc.kind === "badlink") {
    setPhase("badlink", "This share link is incomplete or damaged.", `The link says: ${exc.message}.`);
    showHelp("Copy the whole link, including everything after “#”, and open it again.");
    return;
  }
  setPhase("nolink", exc.message, "A share link carries this browser's access key to the device.");
  showHelp(
    "Ask the device's owner for one; they make it on the device with",
    { code: `peerproxyd share --service ${target.service} --name <your name>` },
    ["It looks like ", { code: `${location.origin}/#v=1&d=${target.device}&s=${target.service}&n=…` }],
  );
}

function showRtt() {
  const rtt = state.link?.rtt;
  ui.rtt.textContent = rtt == null ? "" : `RTT ${rtt < 10 ? rtt.toFixed(1) : Math.round(rtt)} ms`;
}

/** The app has shown content: the card leaves. On the frame's first response (a document
 * that keeps loading, such as a camera stream, never fires `load`) or its load event. */
function showApp() {
  if (state.phase !== "loading") return;
  state.everConnected = true;
  setPhase("connected");
}

/** What the app shim says about a download (app-shim.js): shown in the bar. */
function startDownloadNotices() {
  addEventListener("message", (event) => {
    const msg = event.data;
    if (event.origin !== location.origin || msg?.type !== "peerproxy-download") return;
    const text = {
      started: `Downloading ${msg.name}…`,
      done: `Downloaded ${msg.name}`,
      failed: `Download of ${msg.name} failed: ${msg.message}`,
    }[msg.state];
    if (!text) return;
    document.body.dataset.download = msg.state;
    ui.barDetail.textContent = text;
    ui.barDetail.classList.toggle("problem", msg.state === "failed");
  });
}

function createFrame() {
  const frame = document.createElement("iframe");
  frame.id = "app";
  frame.name = "app";
  frame.title = "app";
  frame.setAttribute("sandbox", SANDBOX);
  frame.setAttribute("allow", "fullscreen; clipboard-write");
  frame.addEventListener("load", () => {
    showApp();
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
      } else if (info.destination === "iframe") {
        showApp();
      }
    },
  });
  state.relay = relay;
  // The app's HTTP Basic auth: asked for in a dialog, kept in this tab's memory (basicauth.js).
  const signIn = new SignIn(relay.credentials, $("signin"), [target.service, target.device], {
    // The requests gave up waiting (the app has its 401 page): load the frame again.
    onLate: () => $("app")?.contentWindow?.location.reload(),
  });
  state.signIn = signIn;

  // A page loaded without the link (a first visit reloads itself without it, access.js)
  // starts config.json and the signaling connection beside the credential (IndexedDB), which
  // they do not need, and its worker too if the worker controls it already. A first visit's
  // worker waits for the credential: one that activated while the page reloaded itself would
  // claim no page (no controller).
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const connectSignaling = () => iceConfig().then((config) => {
    mark("config");
    const signaling = new Signaling(config.signalingUrl ?? `${scheme}//${location.host}/ws`);
    signaling.ready().catch(() => {}); // connectOnce waits for it, and says what failed
    return { config, signaling };
  });
  const early = linkHref ? null : connectSignaling();
  const workerEarly = !linkHref && navigator.serviceWorker?.controller ? startWorker(relay, signIn) : null;
  workerEarly?.catch(() => {}); // awaited below

  let credential;
  try {
    credential = await loadCredential(linkHref, target);
    mark("credential");
  } catch (exc) {
    early?.then(({ signaling }) => signaling.close());
    if (!(exc instanceof NoCredential)) {
      setPhase("failed", "This browser cannot run the viewer.", exc.message);
      return;
    }
    showNoCredential(exc, target);
    return;
  }
  if (!credential) return; // reloading without the link's fragment (access.js)

  startWebSocketBridge(relay);
  startDownloadNotices();
  try {
    await (workerEarly ?? startWorker(relay, signIn));
  } catch (exc) {
    setPhase("failed", "This browser cannot run the viewer.", exc.message);
    return;
  }
  const { config, signaling } = await (early ?? connectSignaling());
  let frame = null;
  let delay = BACKOFF_MIN;
  // Refused for good (or an impostor answered): stop connecting, take the app away, say why.
  const giveUp = (problem) => {
    frame?.remove();
    frame = null;
    signaling.close();
    ui.path.textContent = "";
    ui.rtt.textContent = "";
    ui.viewer.textContent = "";
    if (problem.step) state.step = problem.step; // the step that failed (a live session too)
    setPhase(problem.phase, problem.message, problem.detail);
    if (problem.help) showHelp(...problem.help);
  };
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
    let granted;
    try {
      ({ pc, channel, granted } = await connectOnce(target, signaling, config, credential));
    } catch (exc) {
      state.lastError = exc.message;
      const problem = describeFailure(exc, target, credential);
      if (problem.final) {
        giveUp(problem);
        return;
      }
      if (state.everConnected) {
        const why = problem.phase === "failed" ? exc.message : problem.message;
        setPhase("lost", LOST, why);
      } else {
        setPhase(problem.phase, problem.message, problem.detail);
      }
      await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random() / 2)));
      delay = Math.min(delay * 2, BACKOFF_MAX);
      continue;
    }
    mark("granted");
    delay = BACKOFF_MIN;
    state.viewer = granted.viewer;
    state.expires = granted.expires?.toISOString() ?? null;
    ui.viewer.textContent = granted.viewer;
    ui.viewer.title = `viewer ${granted.viewer}` +
      (granted.expires ? `; access until ${granted.expires.toLocaleString()}` : "; no expiry");
    let lost;
    const closed = new Promise((resolve) => {
      lost = resolve;
    });
    // The device ends a session it no longer serves (revoked, expired) with an auth-error.
    let refusal = null;
    const onText = (text) => {
      try {
        parseAuthReply(text);
      } catch (exc) {
        if (exc instanceof AuthError && exc.code !== "bad-auth") {
          refusal = exc;
          link.close(`${target.device} ended the session: ${exc.message}`);
        }
      }
    };
    const link = new PeerLink(channel, {
      onClose: (reason) => lost(reason), onText, packed: granted.packed,
    });
    // ICE restart (docs/network.md): when the device asks, or when our ICE loses its path.
    // One at a time; a restart that fails ends the connection (the loop makes a new one).
    let restarting = null;
    const restart = (why) => {
      if (restarting || pc.connectionState === "closed") return;
      restarting = restartIce(pc, target, signaling, credential)
        .then(() => describePath(pc).then((path) => {
          ui.path.textContent = path;
          state.pathText = path;
        }))
        .catch((exc) => link.close(`ICE restart (${why}) failed: ${exc.message}`))
        .finally(() => {
          restarting = null;
        });
    };
    signaling.onMessage = (msg) => {
      if (msg.type === "restart" && msg.from === target.device) restart("asked by the device");
    };
    pc.addEventListener("iceconnectionstatechange", () => {
      if (["disconnected", "failed"].includes(pc.iceConnectionState)) restart(`ICE ${pc.iceConnectionState}`);
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "closed") link.close("connection closed");
      // A failed ICE transport may still come back by a restart; a failed DTLS cannot.
      if (pc.connectionState === "failed" && !restarting) link.close("connection failed");
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
    signaling.onMessage = () => {};
    relay.setLink(null);
    state.link = null;
    pc.close();
    state.pc = null;
    state.lastError = reason;
    if (refusal) {
      const problem = describeFailure(refusal, target, credential);
      if (problem.final) {
        giveUp(problem);
        return;
      }
    }
    ui.path.textContent = "";
    ui.rtt.textContent = "";
    setPhase("lost", LOST, reason);
  }
}

run();
