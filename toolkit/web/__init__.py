"""The web app: app (the static site and its npm-pinned runtimes, LiteRT.js and ONNX Runtime Web), export (the `web`
export format: fixed-batch models and models.json), server (`toolkit serve`: cross-origin isolation, certified files
only) and chromium (headless Chromium through Playwright: verify in the page, screenshots). The benchmark's browser
backend is `toolkit.bench.browser`."""
