// webclient/basicauth.js: Basic challenges, the header value, protection spaces (RFC 7617).
import assert from "node:assert/strict";
import { test } from "node:test";

import { BasicCredentials, basicAuthorization, basicRealm, parseChallenges, spaceOf } from "../basicauth.js";

test("basicRealm: the realm of a Basic challenge, any case of the scheme, else null", () => {
  assert.equal(basicRealm([["WWW-Authenticate", 'Basic realm="Authorization Required"']]), "Authorization Required");
  assert.equal(basicRealm([["www-authenticate", 'bAsIc REALM="a \\"quoted\\", realm", charset="UTF-8"']]),
    'a "quoted", realm');
  assert.equal(basicRealm([["www-authenticate", "Basic realm=token"]]), "token");
  assert.equal(basicRealm([["www-authenticate", "Basic"]]), "");
  // Other schemes pass through; Basic offered next to them is found.
  assert.equal(basicRealm([["www-authenticate", 'Digest realm="x", nonce="abc", qop="auth"']]), null);
  assert.equal(basicRealm([["www-authenticate", "Bearer"], ["content-type", "text/plain"]]), null);
  assert.equal(basicRealm([["www-authenticate", "Negotiate"], ["www-authenticate", 'Basic realm="second"']]),
    "second");
  assert.equal(basicRealm([["www-authenticate", 'Negotiate abc==, Digest realm="d", nonce=1, Basic realm="b"']]),
    "b");
  assert.equal(basicRealm([["content-type", "text/html"]]), null);
  assert.equal(basicRealm([["www-authenticate", "Basicrealm"]]), null);
});

test("parseChallenges: token68, params, junk", () => {
  assert.deepEqual(parseChallenges('Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"'), [
    { scheme: "newauth", params: { realm: "apps", type: "1", title: 'Login to "apps"' } },
    { scheme: "basic", params: { realm: "simple" } },
  ]);
  assert.deepEqual(parseChallenges("Negotiate a87421000492aa874209af8bc028, Basic realm = x"), [
    { scheme: "negotiate", params: {} },
    { scheme: "basic", params: { realm: "x" } },
  ]);
  assert.deepEqual(parseChallenges("Negotiate YII=, Basic"), [
    { scheme: "negotiate", params: {} },
    { scheme: "basic", params: {} },
  ]);
  assert.deepEqual(parseChallenges('Basic realm="unterminated'), [{ scheme: "basic", params: { realm: "unterminated" } }]);
  assert.deepEqual(parseChallenges(""), []);
  assert.deepEqual(parseChallenges("=, ,;"), []);
});

test("basicAuthorization: base64 of the UTF-8 of user:password", () => {
  assert.equal(basicAuthorization("Aladdin", "open sesame"), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
  assert.equal(basicAuthorization("test", "123£"), "Basic dGVzdDoxMjPCow=="); // RFC 7617 3
  assert.equal(basicAuthorization("a:b", ""), "Basic YTpiOg==");
});

test("spaceOf: the directory of the path, without the query", () => {
  assert.equal(spaceOf("/"), "/");
  assert.equal(spaceOf("/index.html"), "/");
  assert.equal(spaceOf("/docs/"), "/docs/");
  assert.equal(spaceOf("/docs/a/b.html?x=/y/z"), "/docs/a/");
  assert.equal(spaceOf("/docs?x=/y/"), "/");
});

test("BasicCredentials: pre-emptive for paths under a space, per realm, forgotten when refused", () => {
  const creds = new BasicCredentials();
  creds.add("/admin/index.html", "Admin", "Basic YQ==");
  assert.equal(creds.forPath("/admin/"), "Basic YQ==");
  assert.equal(creds.forPath("/admin/users/1?q=2"), "Basic YQ==");
  assert.equal(creds.forPath("/admin"), null); // "/" is not under "/admin/"
  assert.equal(creds.forPath("/other/admin/x"), null);
  assert.equal(creds.forRealm("Admin"), "Basic YQ==");
  assert.equal(creds.forRealm("Other"), null);
  // The deepest space wins; a realm's new credentials replace its old ones everywhere.
  creds.add("/admin/deep/x", "Deep", "Basic ZA==");
  creds.add("/", "Root", "Basic cg==");
  assert.equal(creds.forPath("/admin/deep/y"), "Basic ZA==");
  assert.equal(creds.forPath("/admin/y"), "Basic YQ==");
  assert.equal(creds.forPath("/y"), "Basic cg==");
  creds.add("/admin/more/", "Admin", "Basic Yg==");
  assert.equal(creds.forPath("/admin/y"), "Basic Yg==");
  assert.equal(creds.forPath("/admin/more/z"), "Basic Yg==");
  creds.forget("Basic Yg==");
  assert.equal(creds.forPath("/admin/y"), "Basic cg==");
  assert.equal(creds.forRealm("Admin"), null);
});
