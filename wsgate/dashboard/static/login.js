// The login page has no inline script (the Content-Security-Policy allows none): say when a login failed.
if (new URLSearchParams(location.search).has("failed")) document.getElementById("failed").hidden = false;
