// The demo page: ?bundle=URL names the bundle folder, ?ep=webgpu asks for WebGPU (used when navigator.gpu exists;
// else wasm). The bundle is loaded and verified by src/bundle.js (fetch reader), the models opened on
// onnxruntime-web, and each Generate runs src/sampler.js's RuntimePipeline. After a generation,
// window.pocketdiffResult holds {pixels (uint8 HWC, a plain array), width, height, timings, msPerStep, steps, ep}.

import { loadBundle } from './src/bundle.js';
import { fetchReader } from './src/fetch_reader.js';
import { Cancelled, RuntimePipeline } from './src/sampler.js';
import { OrtSession } from './src/sessions.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const bundleUrl = params.get('bundle');
const ep = params.get('ep') === 'webgpu' && navigator.gpu ? 'webgpu' : 'wasm';
let pipeline = null;
let cancelled = false;

function status(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'error' : '';
}

async function loadOrt() {
  const dist = new URL('./node_modules/onnxruntime-web/dist/', location.href).href;
  const ort = await import(dist + (ep === 'webgpu' ? 'ort.webgpu.min.mjs' : 'ort.wasm.min.mjs'));
  ort.env.wasm.wasmPaths = dist;
  ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  return ort;
}

async function init() {
  $('bundle-url').textContent = bundleUrl ?? '(none)';
  $('ep').textContent = ep;
  if (!bundleUrl) throw new Error('no bundle: open this page with ?bundle=URL of a bundle folder');
  const [ort, bundle] = await Promise.all([loadOrt(), loadBundle(fetchReader(bundleUrl), { verify: true })]);
  const d = bundle.manifest.defaults;
  $('steps').value = d.steps;
  $('guidance').value = d.guidance;
  status('opening the models…');
  const open = async (b, c, inputs, outputs) => OrtSession.create(ort, await b.read(c.path), inputs, outputs,
    { path: c.path, executionProviders: [ep] });
  pipeline = await RuntimePipeline.fromBundle(bundle, open);
  $('generate').disabled = false;
  status(`ready: ${bundle.manifest.sampler?.policy ?? 'default'} policy, ${bundle.manifest.scheduler.name} scheduler`);
  window.pocketdiffReady = true;
}

function draw(result) {
  const canvas = $('image');
  canvas.width = result.width;
  canvas.height = result.height;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(result.width, result.height);
  for (let p = 0; p < result.width * result.height; p++) {
    img.data.set(result.image.subarray(3 * p, 3 * p + 3), 4 * p);
    img.data[4 * p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function showTimings(timings, msPerStep) {
  const rows = Object.entries(timings).map(([k, v]) => [k.replace(/_s$/, ''), `${(v * 1000).toFixed(1)} ms`]);
  rows.push(['per step', `${msPerStep.toFixed(1)} ms`]);
  $('timings').replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement('tr');
    for (const text of [k, v]) tr.appendChild(Object.assign(document.createElement('td'), { textContent: text }));
    return tr;
  }));
}

async function generate(event) {
  event.preventDefault();
  const steps = Number($('steps').value), guidance = Number($('guidance').value), seed = Number($('seed').value);
  cancelled = false;
  $('generate').disabled = true;
  $('cancel').disabled = false;
  $('progress').value = 0;
  status('generating…');
  window.pocketdiffResult = null;
  try {
    const result = await pipeline.generate($('prompt').value, { steps, guidance, seed,
      callback: async (done, total) => {
        $('progress').value = done / total;
        await new Promise((resolve) => setTimeout(resolve, 0)); // let the page paint and the Cancel click land
        return !cancelled;
      } });
    draw(result);
    const msPerStep = (result.timings.unet_s * 1000) / result.steps;
    showTimings(result.timings, msPerStep);
    status(`done: ${result.steps} steps, ${(result.timings.total_s * 1000).toFixed(0)} ms`);
    window.pocketdiffResult = { pixels: Array.from(result.image), width: result.width, height: result.height,
      timings: result.timings, msPerStep, steps: result.steps, ep };
  } catch (exc) {
    if (exc instanceof Cancelled) status(exc.message);
    else {
      status(`error: ${exc.message}`, true);
      window.pocketdiffError = exc.message;
    }
  } finally {
    $('generate').disabled = false;
    $('cancel').disabled = true;
  }
}

$('form').addEventListener('submit', generate);
$('cancel').addEventListener('click', () => { cancelled = true; });
init().catch((exc) => {
  status(`error: ${exc.message}`, true);
  window.pocketdiffError = exc.message;
});
