// The landing page of the bare signaling host: a form that opens <device>--<service>.<host>.
const form = document.getElementById("open");
for (const el of document.querySelectorAll(".host")) el.textContent = location.host;
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const device = form.device.value.trim().toLowerCase();
  const service = form.service.value.trim().toLowerCase();
  location.href = `${location.protocol}//${device}--${service}.${location.host}/`;
});
