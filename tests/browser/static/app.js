// The test app's script: proves scripts run inside the proxied frame.
document.getElementById("js-status").textContent = "script ran";
window.appLoaded = true;
