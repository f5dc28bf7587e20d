// The bundle reader for node (bundle.js describes the interface): files under a folder, lstat/readlink for the
// symlink-confinement check. Node only (imports node:fs); the page uses fetch_reader.js.

import fs from 'node:fs/promises';
import path from 'node:path';

export function nodeReader(dir) {
  const root = path.resolve(dir);
  const at = (rel) => path.join(root, ...rel.split('/'));
  return {
    label: String(dir).replace(/(.)\/+$/, '$1'),
    async exists() { return fs.stat(root).then((s) => s.isDirectory(), () => false); },
    async readBytes(rel) {
      try {
        if (!(await fs.stat(at(rel))).isFile()) return null;
        return new Uint8Array(await fs.readFile(at(rel)));
      } catch {
        return null;
      }
    },
    async isSymlink(rel) { return fs.lstat(at(rel)).then((s) => s.isSymbolicLink(), () => false); },
    async readLink(rel) { return fs.readlink(at(rel)); },
  };
}
