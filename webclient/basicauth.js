// HTTP Basic authentication for the app, sans-IO (RFC 7617). A browser answers a 401 with
// `WWW-Authenticate: Basic realm="…"` by asking the user, but never for a Response a service
// worker made; so the client does it (sw.js asks, signin.js shows the dialog, relay.js and
// wsbridge.js add the header). This module: the challenge, the header value, and the
// credentials of this tab with their protection spaces.

/** The realm of the first Basic challenge in `headers` ([name, value] pairs), or null. */
export function basicRealm(headers) {
  for (const [name, value] of headers) {
    if (name.toLowerCase() !== "www-authenticate") continue;
    const basic = parseChallenges(value).find((c) => c.scheme === "basic");
    if (basic) return basic.params.realm ?? "";
  }
  return null;
}

const TOKEN = /[!#$%&'*+\-.^_`|~0-9A-Za-z]+/y;
const SPACE = /[ \t]*/y;

/**
 * A WWW-Authenticate value as [{scheme (lower case), params: {name (lower case): value}}]
 * (RFC 9110 11.6.1: a list of challenges, each a scheme and a token68 or auth-params; the
 * commas separate both, so a token followed by "=" is a parameter of the challenge before).
 */
export function parseChallenges(value) {
  const challenges = [];
  let at = 0;
  const match = (re) => {
    re.lastIndex = at;
    const m = re.exec(value);
    if (!m) return "";
    at = re.lastIndex;
    return m[0];
  };
  let current = null;
  let listed = true; // at the start or after a comma: a token there may begin a challenge
  while (at < value.length) {
    match(SPACE);
    if (value[at] === ",") {
      at += 1;
      listed = true;
      continue;
    }
    const token = match(TOKEN);
    if (!token) {
      at += 1; // not HTTP: skip the character
      continue;
    }
    match(SPACE);
    if (value[at] !== "=") {
      if (listed || !current) {
        current = { scheme: token.toLowerCase(), params: {} };
        challenges.push(current);
        listed = false;
      } // else a token68 after the scheme
      continue;
    }
    listed = false;
    // token68 ("abc==") or name=value
    const equals = /=+/y;
    equals.lastIndex = at;
    const run = equals.exec(value)[0].length;
    at += run;
    match(SPACE);
    if (run > 1 || at >= value.length || value[at] === ",") continue; // a token68
    let param;
    if (value[at] === '"') {
      param = "";
      for (at += 1; at < value.length && value[at] !== '"'; at += 1) {
        if (value[at] === "\\") at += 1;
        param += value[at] ?? "";
      }
      at += 1;
    } else {
      param = match(TOKEN);
    }
    if (current && !(token.toLowerCase() in current.params)) current.params[token.toLowerCase()] = param;
  }
  return challenges;
}

/** The Authorization value for `user` and `password`: UTF-8, as RFC 7617 2.1 recommends. */
export function basicAuthorization(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return `Basic ${btoa(binary)}`;
}

const pathOf = (target) => target.split("?")[0];

/** The protection space of a request target (RFC 7617 2.2): its directory and all below. */
export function spaceOf(target) {
  const path = pathOf(target);
  return path.slice(0, path.lastIndexOf("/") + 1) || "/";
}

/**
 * The credentials of this tab, in memory only: realm -> {authorization, spaces}. Like a
 * browser, a request under a space that has credentials carries them before any 401.
 */
export class BasicCredentials {
  constructor() {
    this.realms = new Map();
  }

  /** Credentials for the realm, used from now on for the space of `path`. */
  add(path, realm, authorization) {
    const entry = this.realms.get(realm) ?? { authorization, spaces: new Set() };
    entry.authorization = authorization;
    entry.spaces.add(spaceOf(path));
    this.realms.set(realm, entry);
  }

  /** The Authorization value for a request target (the deepest space it is under), or null. */
  forPath(target) {
    const path = pathOf(target);
    let best = null;
    let depth = -1;
    for (const { authorization, spaces } of this.realms.values()) {
      for (const space of spaces) {
        if (path.startsWith(space) && space.length > depth) {
          best = authorization;
          depth = space.length;
        }
      }
    }
    return best;
  }

  forRealm(realm) {
    return this.realms.get(realm)?.authorization ?? null;
  }

  /** The device refused these credentials: forget them. */
  forget(authorization) {
    for (const [realm, entry] of this.realms) {
      if (entry.authorization === authorization) this.realms.delete(realm);
    }
  }
}
