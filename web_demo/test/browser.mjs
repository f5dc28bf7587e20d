#!/usr/bin/env node
// The demo page in headless Debian Chromium (playwright-core), run by the Python test suite; not a node --test file.
//
//   node test/browser.mjs --bundle DIR --prompt P --seed N --steps S --guidance G --expected FILE --out JSON
//                         [--screenshot PNG] [--ep wasm|webgpu] [--timeout-s 180]
//
// Serves web_demo/ at / and the bundle folder at /bundle/ from its own HTTP server on 127.0.0.1 (a random port),
// opens index.html?bundle=/bundle/, fills the form, clicks Generate, waits for window.pocketdiffResult and compares
// its pixels with the expected image. The expected file: JSON {"height": H, "width": W, "pixels": [H*W*3 uint8,
// row-major HWC RGB]} (what the Python side writes), or a .npy uint8 array [H, W, 3] (C order).
// Writes {max_abs_diff, within_2_of_255, ms_per_step, timings, user_agent, ep, width, height} to --out.
// Exit 0 only when the max abs pixel difference is <= 2; 1 when it is larger; 2 when the run itself failed.
// Under `node --test test/` (NODE_TEST_CONTEXT set) it does nothing and passes.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TOLERANCE = 2;
const MIME = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.json': 'application/json', '.wasm': 'application/wasm', '.txt': 'text/plain; charset=utf-8', '.css': 'text/css' };
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

function parseArgs(argv) {
  const a = { ep: 'wasm', timeoutS: 180, screenshot: null };
  const keys = { '--bundle': 'bundle', '--prompt': 'prompt', '--seed': 'seed', '--steps': 'steps', '--guidance': 'guidance',
    '--expected': 'expected', '--out': 'out', '--screenshot': 'screenshot', '--ep': 'ep', '--timeout-s': 'timeoutS' };
  for (let i = 0; i < argv.length; i += 2) {
    if (!(argv[i] in keys) || i + 1 >= argv.length) throw new Error(`unknown or incomplete argument ${argv[i]}`);
    a[keys[argv[i]]] = argv[i + 1];
  }
  for (const k of ['bundle', 'prompt', 'seed', 'steps', 'guidance', 'expected', 'out']) {
    if (a[k] === undefined) throw new Error(`--${k} is required`);
  }
  return a;
}

function readNpy(buf) {
  const headerLen = buf.readUInt16LE(8);
  const header = buf.subarray(10, 10 + headerLen).toString('latin1');
  if (!/'descr':\s*'\|u1'/.test(header) || /'fortran_order':\s*True/.test(header)) throw new Error('expected a C-order uint8 .npy');
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').filter((s) => s.trim()).map(Number);
  return { height: shape[0], width: shape[1], pixels: Array.from(buf.subarray(10 + headerLen)) };
}

function readExpected(file) {
  if (file.endsWith('.npy')) return readNpy(fs.readFileSync(file));
  const e = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (!Array.isArray(e.pixels) || e.pixels.length !== e.height * e.width * 3) throw new Error(`${file}: pixels must be H*W*3 values`);
  return e;
}

/** A static server: /bundle/... from the bundle folder, everything else from web_demo/; nothing outside either. */
function serve(bundleDir) {
  const roots = [['/bundle/', path.resolve(bundleDir)], ['/', WEB]];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const [prefix, root] = roots.find(([p]) => url.pathname.startsWith(p));
    const file = path.resolve(root, '.' + decodeURIComponent(url.pathname.slice(prefix.length - 1)));
    if (file !== root && !file.startsWith(root + path.sep)) {
      res.writeHead(403).end();
      return;
    }
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'Content-Type': MIME[path.extname(file)] ?? 'application/octet-stream',
        'Content-Length': st.size, 'Cache-Control': 'no-store' });
      fs.createReadStream(file).pipe(res);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const expected = readExpected(args.expected);
  const server = await serve(args.bundle);
  const port = server.address().port;
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
    const timeout = Number(args.timeoutS) * 1000;
    await page.goto(`http://127.0.0.1:${port}/index.html?bundle=/bundle/&ep=${encodeURIComponent(args.ep)}`);
    await page.waitForFunction(() => window.pocketdiffReady || window.pocketdiffError, null, { timeout });
    const loadError = await page.evaluate(() => window.pocketdiffError ?? null);
    if (loadError) throw new Error(`the page failed to load the bundle: ${loadError}`);
    await page.fill('#prompt', args.prompt);
    await page.fill('#steps', String(args.steps));
    await page.fill('#guidance', String(args.guidance));
    await page.fill('#seed', String(args.seed));
    await page.click('#generate');
    await page.waitForFunction(() => window.pocketdiffResult || window.pocketdiffError, null, { timeout });
    const [result, error, userAgent] = await page.evaluate(() => [window.pocketdiffResult, window.pocketdiffError ?? null,
      navigator.userAgent]);
    if (!result) throw new Error(`generation failed: ${error}\n${logs.join('\n')}`);
    if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    let maxDiff = Infinity;
    if (result.width === expected.width && result.height === expected.height) {
      maxDiff = result.pixels.reduce((m, v, i) => Math.max(m, Math.abs(v - expected.pixels[i])), 0);
    }
    const report = { max_abs_diff: Number.isFinite(maxDiff) ? maxDiff : null, within_2_of_255: maxDiff <= TOLERANCE,
      ms_per_step: result.msPerStep, timings: result.timings, user_agent: userAgent, ep: result.ep,
      width: result.width, height: result.height, steps: result.steps };
    fs.writeFileSync(args.out, JSON.stringify(report, null, 2) + '\n');
    console.log(JSON.stringify(report));
    return maxDiff <= TOLERANCE ? 0 : 1;
  } finally {
    await browser.close();
    server.close();
  }
}

if (process.env.NODE_TEST_CONTEXT) {
  // `node --test test/` runs every file in test/: this script is run by the Python suite with its arguments instead.
  console.log('# test/browser.mjs is a script (tests/test_ports.py runs it with its arguments); nothing to do here');
} else main().then((code) => { process.exitCode = code; }, (exc) => {
  console.error(`error: ${exc.stack ?? exc}`);
  process.exitCode = 2;
});
