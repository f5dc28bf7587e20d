// The bundle reader for the browser (bundle.js describes the interface): files fetched from a base URL; symlinks
// are the server's business (isSymlink is always false). Fetched bytes are kept, so the checksum pass and the
// session loads read each file once.

export function fetchReader(baseUrl, fetchImpl = globalThis.fetch.bind(globalThis)) {
  const base = baseUrl.endsWith('/') ? baseUrl : baseUrl + '/';
  const cache = new Map();
  const get = async (rel) => {
    const url = new URL(rel.split('/').map(encodeURIComponent).join('/'), new URL(base, globalThis.location?.href));
    const res = await fetchImpl(url);
    if (!res.ok) return null;
    return new Uint8Array(await res.arrayBuffer());
  };
  return {
    label: baseUrl.replace(/(.)\/+$/, '$1'),
    async exists() { return true; },
    async readBytes(rel) {
      if (!cache.has(rel)) cache.set(rel, get(rel));
      return cache.get(rel);
    },
    async isSymlink() { return false; },
    async readLink(rel) { throw new Error(`no symlinks over HTTP: ${rel}`); },
  };
}
