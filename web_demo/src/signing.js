// Mirrors pocketdiff/runtime/signing.py (the verifying half): Ed25519 (RFC 8032) over the exact bytes of
// manifest.json, the signature beside it as manifest.json.sig (128 lowercase hex characters and a newline), a
// public key file of 64 lowercase hex characters. Verified with WebCrypto's Ed25519 (node 20 and browsers).

import { PocketdiffError } from './errors.js';

export const SIGNATURE_FILE = 'manifest.json.sig';
const HEX = /^[0-9a-f]+$/;

export const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
const fromHex = (s) => Uint8Array.from(s.match(/../g), (h) => parseInt(h, 16));

/** A hex file's bytes (`text`: its content, or null when it cannot be read); `path` names it in messages. */
export function hexFile(text, path, nBytes, what) {
  if (text === null) throw new PocketdiffError(`cannot read ${what} ${path}: no such file`);
  if (!/^[\x00-\x7f]*$/.test(text)) throw new PocketdiffError(`cannot read ${what} ${path}: not ASCII`);
  text = text.trim();
  if (text.length !== 2 * nBytes || !HEX.test(text)) {
    throw new PocketdiffError(`${what} ${path} must hold ${2 * nBytes} lowercase hex characters`);
  }
  return fromHex(text);
}

/** The raw 32-byte public key of a public key file's text. */
export function loadPublicKey(text, path) {
  return hexFile(text, path, 32, 'public key');
}

/**
 * Fail closed: a missing or malformed signature, or one that does not match `manifestBytes` under `key` (32 raw
 * bytes). `signatureText`: the signature file's content, or null when it is missing (or a symlink).
 */
export async function verify(manifestBytes, signatureText, key, bundle) {
  if (signatureText === null) {
    throw new PocketdiffError(`bundle ${bundle} is not signed (${SIGNATURE_FILE} is missing) but a trusted key was ` +
      'given');
  }
  const signature = hexFile(signatureText, `${bundle}/${SIGNATURE_FILE}`, 64, 'signature');
  let ok = false;
  try {
    const pub = await crypto.subtle.importKey('raw', key, { name: 'Ed25519' }, false, ['verify']);
    ok = await crypto.subtle.verify({ name: 'Ed25519' }, pub, signature, manifestBytes);
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new PocketdiffError(`bundle ${bundle}: the manifest's signature does not verify with the trusted key ` +
      '(signed by another key, or the manifest changed after signing)');
  }
}
