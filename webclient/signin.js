// The sign-in dialog of the manager page for HTTP Basic auth (basicauth.js): what a browser
// shows for a 401 from the network, for the worker's requests, whose 401s it never answers.
// The worker asks over the manager port ({type:"basic-auth", realm, target, sent, wait},
// sw.js); the answer is {authorization} or {cancel: true}. Requests that wait for the same
// realm share one dialog; dialogs of different realms come one after the other. A request
// waits at most `wait` ms (the browser ends a worker's unanswered fetch after 5 minutes), then
// the app gets its 401: a sign-in after that calls `onLate` (the manager reloads the frame).

import { basicAuthorization } from "./basicauth.js";

export class SignIn {
  /** `credentials`: the tab's BasicCredentials (relay.js); `where`: [service, device]. */
  constructor(credentials, dialog, [service, device], { onLate = () => {} } = {}) {
    this.credentials = credentials;
    this.onLate = onLate;
    this.dialog = dialog;
    this.where = [service, device];
    this.pending = new Map(); // realm -> the answer of its dialog
    this.queue = Promise.resolve();
    this.shown = 0; // dialogs shown (for the tests)
  }

  /** A 401 for `target` asked for Basic credentials of `realm`; `sent`: those it carried. */
  ask({ realm, target, sent, wait = Infinity }) {
    if (sent) this.credentials.forget(sent); // refused
    const known = this.credentials.forRealm(realm);
    if (known && known !== sent) {
      // Signed in meanwhile (another request's dialog): these credentials, no dialog.
      this.credentials.add(target, realm, known);
      return Promise.resolve({ authorization: known });
    }
    let answer = this.pending.get(realm);
    if (!answer) {
      const asked = Date.now();
      answer = this.queue.then(() => this._show(realm, Boolean(sent))).then((reply) => {
        if (reply.authorization && Date.now() - asked >= wait) setTimeout(() => this.onLate()); // after the add below
        return reply;
      });
      this.queue = answer;
      this.pending.set(realm, answer);
      answer.finally(() => this.pending.delete(realm));
    }
    return answer.then((reply) => {
      if (reply.authorization) this.credentials.add(target, realm, reply.authorization);
      return reply;
    });
  }

  _show(realm, wrong) {
    const d = this.dialog;
    const $ = (name) => d.querySelector(`[data-signin=${name}]`);
    $("service").textContent = this.where[0];
    $("device").textContent = this.where[1];
    $("realm").textContent = realm;
    $("wrong").hidden = !wrong;
    $("password").value = "";
    this.shown += 1;
    d.dataset.shown = String(this.shown);
    return new Promise((resolve) => {
      d.addEventListener("close", () => {
        if (d.returnValue === "sign-in") {
          resolve({ authorization: basicAuthorization($("user").value, $("password").value) });
        } else {
          resolve({ cancel: true });
        }
        $("password").value = "";
      }, { once: true });
      d.returnValue = "";
      $("cancel").onclick = () => d.close("cancel"); // Enter in a field is Sign in
      d.showModal();
      (wrong ? $("password") : $("user")).focus();
    });
  }
}
