// Mirrors pocketdiff/runtime/bundle.py: read an app bundle, everything checked first, in the same order:
// 1. manifest.json read as bytes (a symlinked manifest is refused); 2. with a trusted key, its Ed25519 signature
// over those bytes; 3. its structure (manifest.js); 4. every path it names stays inside the bundle; 5. every
// component is covered by the checksums and (verify) every listed file has its size and sha256 (WebCrypto).
//
// Bundle I/O goes through a reader, so the same code runs in node and the browser:
//   { label, exists(), readBytes(rel) -> Uint8Array | null (not a regular file), isSymlink(rel), readLink(rel) }
// (node_reader.js: fs with lstat/readlink; fetch_reader.js: HTTP, where symlinks are the server's business).

import { PocketdiffError, parseJson } from './errors.js';
import { FORMAT_VERSION, checkManifest, posixParts, resolveInside } from './manifest.js';
import { runtimeRoles } from './policies/index.js';
import { SIGNATURE_FILE, toHex, verify as verifySignature } from './signing.js';
import { CLIPBPETokenizer } from './tokenizer.js';

export const MANIFEST = 'manifest.json';
export { FORMAT_VERSION, SIGNATURE_FILE };

const utf8 = (bytes) => new TextDecoder('utf-8', { fatal: true }).decode(bytes);

export async function sha256Hex(bytes) {
  return toHex(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)));
}

export class Bundle {
  constructor(reader, manifest, components, signedBy = null) {
    Object.assign(this, { reader, manifest, components, signedBy, path: reader.label });
  }

  component(role, target) {
    const c = this.components.find((x) => x.role === role && x.target === target);
    if (c) return c;
    const have = [...new Set(this.components.map((x) => `${x.role}/${x.target}`))].sort();
    throw new PocketdiffError(`bundle ${this.path} has no ${role} for target '${target}'; it has: ${have.join(', ')}`);
  }

  get targets() { return [...new Set(this.components.map((c) => c.target))].sort(); }

  /** A path the manifest names, resolved inside the bundle (relative to it). */
  async file(rel) { return resolveInside(this.reader, rel, rel); }

  /** A file the manifest names, as bytes. */
  async read(rel) {
    const bytes = await this.reader.readBytes(await this.file(rel));
    if (bytes === null) throw new PocketdiffError(`bundle file ${rel} is missing from ${this.path}`);
    return bytes;
  }

  /** The tokenizer from the files the manifest names (and special_tokens_map.json beside the vocab, if listed). */
  async tokenizer() {
    const t = this.manifest.tokenizer;
    const folder = posixParts(t.vocab).slice(0, -1).join('/');
    const special = folder ? `${folder}/special_tokens_map.json` : 'special_tokens_map.json';
    const listed = new Set(this.manifest.files.map((e) => e.path));
    const names = { vocab: `${this.path}/${t.vocab}`, merges: `${this.path}/${t.merges}`,
      special: `${this.path}/${special}`, folder: folder ? `${this.path}/${folder}` : this.path };
    let texts;
    try {
      texts = [utf8(await this.read(t.vocab)), utf8(await this.read(t.merges)),
        listed.has(special) ? utf8(await this.read(special)) : null];
    } catch (exc) {
      throw new PocketdiffError(`cannot read the tokenizer (${names.folder}): ${exc.message}`);
    }
    return CLIPBPETokenizer.fromTexts(...texts, names);
  }
}

/** Every listed file: a regular file inside the bundle, of its size and sha256. */
export async function verifyFiles(reader, files) {
  for (const [i, entry] of files.entries()) {
    const rel = await resolveInside(reader, entry.path, `manifest.files[${i}].path`);
    const bytes = await reader.readBytes(rel);
    if (bytes === null) throw new PocketdiffError(`bundle file ${entry.path} is missing from ${reader.label}`);
    if (bytes.length !== entry.bytes) {
      throw new PocketdiffError(`bundle file ${entry.path} is truncated or altered: ${bytes.length} bytes, ` +
        `manifest says ${entry.bytes}`);
    }
    if (await sha256Hex(bytes) !== entry.sha256) {
      throw new PocketdiffError(`bundle file ${entry.path} fails its sha256 check (tampered or corrupt)`);
    }
  }
}

/** Read and check a bundle (see the top of this file); `verify` also hashes every file; trustedKey: 32 raw bytes. */
export async function loadBundle(reader, { verify = true, trustedKey = null } = {}) {
  const path = reader.label;
  const raw = (await reader.isSymlink(MANIFEST)) ? null : await reader.readBytes(MANIFEST);
  if (raw === null) {
    throw new PocketdiffError((await reader.exists()) ? `bundle ${path} has no ${MANIFEST}` : `bundle ${path} does not exist`);
  }
  if (trustedKey !== null) { // before the bytes are even parsed
    const sig = (await reader.isSymlink(SIGNATURE_FILE)) ? null : await reader.readBytes(SIGNATURE_FILE);
    await verifySignature(raw, sig === null ? null : new TextDecoder('latin1').decode(sig), trustedKey, path);
  }
  let manifest;
  try {
    manifest = parseJson(utf8(raw));
  } catch (exc) {
    throw new PocketdiffError(`bundle manifest ${path}/${MANIFEST} is not valid JSON: ${exc.message}`);
  }
  checkManifest(manifest, runtimeRoles());
  const named = manifest.files.map((e, i) => [`manifest.files[${i}].path`, e.path]);
  manifest.components.forEach((c, i) => named.push([`manifest.components[${i}].path`, c.path]));
  for (const k of ['vocab', 'merges']) named.push([`manifest.tokenizer.${k}`, manifest.tokenizer[k]]);
  if (manifest.test_vectors) named.push(['manifest.test_vectors', manifest.test_vectors]);
  for (const [where, rel] of named) await resolveInside(reader, rel, where);
  const listed = manifest.files.map((e) => e.path);
  const components = manifest.components.map((c) => ({ quantization: null, parity: null, meta: {}, ...c }));
  for (const c of components) {
    const prefix = c.path.replace(/\/+$/, '') + '/';
    if (!listed.includes(c.path) && !listed.some((p) => p.startsWith(prefix))) {
      throw new PocketdiffError(`bundle component ${c.name} (${c.path}) is not covered by the manifest's checksums`);
    }
  }
  if (verify) await verifyFiles(reader, manifest.files);
  return new Bundle(reader, manifest, components, trustedKey !== null ? toHex(trustedKey) : null);
}
