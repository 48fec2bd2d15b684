// The landing page of the bare signaling host: paste a share link, open it (trust.js checks it
// first, so a damaged link is explained here rather than at the device's address).
import { parseLink } from "./trust.js";

const form = document.getElementById("open");
const error = document.getElementById("link-error");
for (const el of document.querySelectorAll(".host")) el.textContent = location.host;
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = form.link.value.trim();
  try {
    parseLink(text);
  } catch (exc) {
    error.textContent = `This is not a whole share link: ${exc.message}.`;
    return;
  }
  error.textContent = "";
  form.link.value = ""; // not left in the page
  location.href = text;
});
