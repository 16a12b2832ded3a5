// A service worker that makes this site cross-origin isolated on a host that cannot send headers (GitHub Pages,
// some CDNs): it answers every same-origin request from the network and adds the headers a server would send,
//   Cross-Origin-Opener-Policy: same-origin, Cross-Origin-Embedder-Policy: require-corp,
//   Cross-Origin-Resource-Policy: same-origin,
// so the browser grants SharedArrayBuffer and WebAssembly threads. It is used only where index.html opts in
// (<meta name="cross-origin-isolation" content="service-worker">), needs HTTPS (or localhost), and takes
// effect after one reload, which app.mjs does once. A host that sends the headers itself needs none of this.

const HEADERS = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin",
};

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (new URL(request.url).origin !== self.location.origin) return;  // the app fetches nothing from elsewhere
  if (request.cache === "only-if-cached" && request.mode !== "same-origin") return;
  event.respondWith(
    fetch(request).then((response) => {
      if (response.status === 0) return response;  // opaque: nothing to add
      const headers = new Headers(response.headers);
      for (const [name, value] of Object.entries(HEADERS)) headers.set(name, value);
      return new Response(response.body, {status: response.status, statusText: response.statusText, headers});
    }),
  );
});
