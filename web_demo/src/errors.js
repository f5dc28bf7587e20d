// Mirrors pocketdiff/errors.py: the one exception type for bad user input, the "unknown X" message, and the
// Python-style formatting (repr, type names, %g) the messages of the Python runtime are written with, so every
// message this port gives is the Python runtime's, word for word.

export class PocketdiffError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PocketdiffError';
  }
}

/** Python's `str(x)` of a value from JSON. */
export function pyStr(v) {
  return typeof v === 'string' ? v : repr(v);
}

export function choiceError(what, value, allowed) {
  const names = Array.isArray(allowed) ? allowed : Object.keys(allowed);
  return new PocketdiffError(`unknown ${what} ${repr(value)}; allowed: ${names.map(pyStr).join(', ')}`);
}

function reprStr(s) {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const cp = ch.codePointAt(0);
    if (ch === quote || ch === '\\') out += '\\' + ch;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (cp < 0x20 || cp === 0x7f) out += '\\x' + cp.toString(16).padStart(2, '0');
    else out += ch;
  }
  return out + quote;
}

/** Python's repr of a float: shortest round-trip digits, exponent from 1e16 and below 1e-4, as `1e-05`. */
export function reprFloat(x) {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return x.toFixed(1);
  const abs = Math.abs(x);
  if (abs >= 1e16 || abs < 1e-4) {
    const [m, e] = x.toExponential().split('e');
    const exp = Number(e);
    return `${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  return String(x);
}

/** Python's repr of a JSON value (integers print as ints: JSON.parse cannot tell 1.0 from 1). */
export function repr(v) {
  if (v === null || v === undefined) return 'None';
  if (v === true) return 'True';
  if (v === false) return 'False';
  if (typeof v === 'string') return reprStr(v);
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : reprFloat(v);
  if (typeof v === 'bigint') return String(v);
  if (Array.isArray(v)) return '[' + v.map(repr).join(', ') + ']';
  if (typeof v === 'object') return '{' + Object.entries(v).map(([k, x]) => `${reprStr(k)}: ${repr(x)}`).join(', ') + '}';
  return String(v);
}

/** Python's `type(v).__name__` of a JSON value. */
export function typeName(v) {
  if (v === null || v === undefined) return 'NoneType';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'string') return 'str';
  if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'float';
  if (Array.isArray(v)) return 'list';
  return 'dict';
}

/** Python's `format(x, '.Ng')` (and `:g`, N = 6). */
export function formatG(x, precision = 6) {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (x === 0) return '0';
  const [m, e] = x.toExponential(precision - 1).split('e');
  const exp = Number(e);
  const strip = (s) => (s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s);
  if (exp < -4 || exp >= precision) return `${strip(m)}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  return strip(x.toFixed(Math.max(0, precision - 1 - exp)));
}

/** JSON.parse that also reads Python's NaN, Infinity and -Infinity (json.dumps writes them; json.loads reads them). */
export function parseJson(text) {
  if (!/NaN|Infinity/.test(text)) return JSON.parse(text);
  let out = '';
  let i = 0;
  let special = false;
  while (i < text.length) {
    const ch = text[i];
    if (ch === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    const m = /^(-?Infinity|NaN)/.exec(text.slice(i, i + 9));
    if (m) {
      out += `"\\u0000${m[1]}"`; // an escaped NUL: no string in a manifest starts with one
      i += m[1].length;
      special = true;
      continue;
    }
    out += ch;
    i += 1;
  }
  if (!special) return JSON.parse(text);
  const values = { '\u0000NaN': NaN, '\u0000Infinity': Infinity, '\u0000-Infinity': -Infinity };
  return JSON.parse(out, (k, v) => (typeof v === 'string' && v in values ? values[v] : v));
}

/** Python's `==` between JSON values (False == 0, True == 1; lists and objects element by element). */
export function pyEq(a, b) {
  const num = (v) => (typeof v === 'boolean' ? Number(v) : v);
  if (typeof num(a) === 'number' && typeof num(b) === 'number') return num(a) === num(b);
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => pyEq(x, b[i]));
  if (a && b && typeof a === 'object' && typeof b === 'object' && !Array.isArray(a) && !Array.isArray(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => k in b && pyEq(a[k], b[k]));
  }
  return a === b;
}
