// Names and addresses, no DOM: which device+service an origin is for, and what a network
// address says about the path.

import { validDeviceId, validServiceName } from "./protocol.js";

const SEPARATOR = "--";

/** {device, service} from a `<device>--<service>.<domain>` host name, or null. */
export function parseHost(hostname) {
  const label = hostname.split(".")[0].toLowerCase();
  const at = label.indexOf(SEPARATOR);
  if (at < 0) return null;
  const device = label.slice(0, at);
  const service = label.slice(at + SEPARATOR.length);
  if (!validDeviceId(device) || !validServiceName(service)) return null;
  if (label.length > 63) return null;
  return { device, service };
}

/** Loopback, private (RFC 1918, ULA), link-local or an mDNS name: the same network. */
export function isLocalAddress(address = "") {
  const a = address.toLowerCase();
  return (
    a.endsWith(".local") ||
    /^(127\.|10\.|192\.168\.|169\.254\.|172\.(1[6-9]|2\d|3[01])\.)/.test(a) ||
    a === "::1" ||
    /^f[cd][0-9a-f]{2}:/.test(a) ||
    /^fe[89ab][0-9a-f]:/.test(a)
  );
}
