// The README and docs/ stay true to the CLI and the tree: every shell line in their ```sh / ```bash /
// ```console blocks that runs tsvmm names a command the built CLI has and only flags that command's
// --help lists; every `npm run X` names a script of package.json; every relative link points to a file
// (and a heading, when it has an #anchor) that exists. The CLI is the built one, as a reader runs it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { projectRoot } from '../../core/paths.js';

const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');
const docs = [
  'README.md',
  ...readdirSync(join(projectRoot, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];
const linked = [
  ...docs,
  ...readdirSync(join(projectRoot, 'bench/results'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `bench/results/${f}`),
];
const read = (f: string) => readFileSync(join(projectRoot, f), 'utf8');

interface ShellLine {
  file: string;
  line: number;
  text: string;
}

/** The command lines of a Markdown file's shell blocks, continuation lines joined, comments dropped. */
function shellLines(file: string, md: string): ShellLine[] {
  const out: ShellLine[] = [];
  let lang: string | undefined;
  let pending: ShellLine | undefined;
  md.split('\n').forEach((raw, i) => {
    const fence = /^\s*```(\w*)/.exec(raw);
    if (fence) {
      lang = lang === undefined ? fence[1]! : undefined;
      return;
    }
    if (lang !== 'sh' && lang !== 'bash' && lang !== 'console') return;
    let text = raw.trim();
    if (lang === 'console' && !pending) {
      if (!text.startsWith('$ ')) return; // output, not a command
      text = text.slice(2);
    }
    text = stripComment(text);
    const cont = text.endsWith('\\');
    if (cont) text = text.slice(0, -1);
    pending = pending ? { ...pending, text: `${pending.text} ${text}` } : { file, line: i + 1, text };
    if (!cont) {
      if (pending.text.trim()) out.push({ ...pending, text: pending.text.trim() });
      pending = undefined;
    }
  });
  return out;
}

/** Drops a `# comment` that starts a word outside quotes. */
function stripComment(s: string): string {
  let q: string | undefined;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (q) {
      if (c === q) q = undefined;
    } else if (c === "'" || c === '"') q = c;
    else if (c === '#' && (i === 0 || /\s/.test(s[i - 1]!))) return s.slice(0, i).trimEnd();
  }
  return s;
}

/** Shell words, quotes removed; `&&`, `||`, `;`, `|` and `&` end a simple command. */
function simpleCommands(s: string): string[][] {
  const cmds: string[][] = [[]];
  let word: string | undefined;
  let q: string | undefined;
  const end = () => {
    if (word !== undefined) cmds[cmds.length - 1]!.push(word);
    word = undefined;
  };
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (q) {
      if (c === q) q = undefined;
      else word += c;
    } else if (c === "'" || c === '"') {
      q = c;
      word ??= '';
    } else if (/\s/.test(c)) end();
    else if (c === ';' || c === '|' || c === '&') {
      end();
      if (s[i + 1] === c) i++;
      cmds.push([]);
    } else word = (word ?? '') + c;
  }
  end();
  return cmds.filter((c) => c.length > 0);
}

/** The arguments of each tsvmm invocation in a simple command (and in the command it runs after `--`). */
function tsvmmInvocations(words: string[]): string[][] {
  let w = words;
  while (w.length && (/^[A-Za-z_][A-Za-z0-9_]*=/.test(w[0]!) || w[0] === 'sudo')) w = w.slice(1);
  let args: string[] | undefined;
  if (w[0] === 'tsvmm') args = w.slice(1);
  else if (w[0] === 'npx' && w[1] === 'tsvmm') args = w.slice(2);
  else if (w[0] === 'node' && w[1]?.endsWith('dist/bin/tsvmm.cjs')) args = w.slice(2);
  if (!args) return [];
  const dash = args.indexOf('--');
  if (dash < 0) return [args];
  return [args.slice(0, dash), ...tsvmmInvocations(args.slice(dash + 1))];
}

const helpCache = new Map<string, string>();
function help(cmd?: string): string {
  const key = cmd ?? '';
  let text = helpCache.get(key);
  if (text === undefined) {
    const r = spawnSync(process.execPath, [cli, ...(cmd ? [cmd] : []), '--help'], { encoding: 'utf8' });
    assert.equal(r.status, 0, `tsvmm ${cmd ?? ''} --help: exit ${r.status}: ${r.stderr}`);
    text = r.stdout;
    helpCache.set(key, text);
  }
  return text;
}

/** The commands `tsvmm --help` lists (two-space indent, a name, then its description). */
function commands(): Set<string> {
  return new Set([...help().matchAll(/^ {2}([a-z][a-z-]*) {2,}/gm)].map((m) => m[1]!));
}

const where = (l: ShellLine) => `${l.file}:${l.line}: ${l.text}`;
const allLines = () => docs.flatMap((f) => shellLines(f, read(f)));

test('docs: the shell-line extraction sees commands, continuations, quotes and what runs after --', () => {
  const md = [
    '```sh',
    'npx tsvmm run --memory 1G \\',
    "  --cmdline 'a # b' --qmp x.sock &   # comment --bogus",
    '```',
    '```console',
    '$ node dist/bin/tsvmm.cjs testhost run --devices edu -- node dist/bin/tsvmm.cjs validate c.json',
    'output --not-a-flag',
    '```',
    '```ts',
    'tsvmm run --ignored',
    '```',
  ].join('\n');
  const lines = shellLines('x.md', md);
  assert.deepEqual(
    lines.map((l) => [l.line, l.text]),
    [
      [2, "npx tsvmm run --memory 1G  --cmdline 'a # b' --qmp x.sock &"],
      [6, 'node dist/bin/tsvmm.cjs testhost run --devices edu -- node dist/bin/tsvmm.cjs validate c.json'],
    ],
  );
  assert.deepEqual(simpleCommands(lines[0]!.text).flatMap(tsvmmInvocations), [
    ['run', '--memory', '1G', '--cmdline', 'a # b', '--qmp', 'x.sock'],
  ]);
  assert.deepEqual(simpleCommands(lines[1]!.text).flatMap(tsvmmInvocations), [
    ['testhost', 'run', '--devices', 'edu'],
    ['validate', 'c.json'],
  ]);
  assert.deepEqual(simpleCommands('A=1 sudo npx tsvmm groups && npm run demo').flatMap(tsvmmInvocations), [['groups']]);
});

test('docs: every tsvmm invocation in README.md and docs/ names a command and flags its --help lists', () => {
  const known = commands();
  assert.ok(known.has('run') && known.has('testhost'), `tsvmm --help lists no commands:\n${help()}`);
  const problems: string[] = [];
  let checked = 0;
  for (const l of allLines()) {
    for (const args of simpleCommands(l.text).flatMap(tsvmmInvocations)) {
      checked++;
      const [cmd, ...rest] = args;
      if (cmd === undefined || cmd === '--help' || cmd === '--version') continue;
      if (!known.has(cmd)) {
        problems.push(`${where(l)}\n    tsvmm has no command '${cmd}' (tsvmm --help: ${[...known].join(', ')})`);
        continue;
      }
      const usage = help(cmd);
      for (const a of rest) {
        if (!a.startsWith('--') || a === '--help') continue;
        const flag = a.split('=')[0]!;
        if (!new RegExp(`(^|[^\\w-])${flag}(?![\\w-])`, 'm').test(usage))
          problems.push(`${where(l)}\n    '${flag}' is not in 'tsvmm ${cmd} --help'`);
      }
    }
  }
  assert.ok(checked >= 10, `only ${checked} tsvmm invocations found in ${docs.join(', ')}`);
  assert.deepEqual(problems, []);
});

test('docs: every `npm run <script>` in README.md and docs/ names a script of package.json', () => {
  const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;
  const problems: string[] = [];
  const prose = docs.flatMap((f) =>
    [...read(f).matchAll(/`npm run ([\w:-]+)/g)].map((m) => ({ file: f, line: 0, text: `npm run ${m[1]}` })),
  );
  for (const l of [...allLines(), ...prose]) {
    for (const w of simpleCommands(l.text)) {
      if (w[0] !== 'npm' || w[1] !== 'run') continue;
      if (!w[2] || !(w[2] in scripts)) problems.push(`${where(l)}\n    package.json has no script '${w[2]}'`);
    }
  }
  assert.deepEqual(problems, []);
});

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
const slug = (h: string) =>
  h
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');

test('docs: every relative link in README.md, docs/ and bench/results/ points to a file (and heading) that exists', () => {
  const problems: string[] = [];
  let checked = 0;
  for (const f of linked) {
    const md = read(f).replace(/^\s*```[\s\S]*?^\s*```/gm, ''); // links in code are not links
    for (const m of md.matchAll(/\[[^\]]*\]\(([^)\s]+)\)/g)) {
      const target = m[1]!;
      if (/^[a-z]+:/.test(target)) continue; // https:, mailto:
      checked++;
      const [path, anchor] = target.split('#') as [string, string | undefined];
      const abs = path ? resolve(projectRoot, dirname(f), path) : join(projectRoot, f);
      if (!existsSync(abs)) {
        problems.push(`${f}: (${target}) → ${relative(projectRoot, abs)} does not exist`);
        continue;
      }
      if (anchor && abs.endsWith('.md')) {
        const heads = [...readFileSync(abs, 'utf8').matchAll(/^#+ (.*)$/gm)].map((h) => slug(h[1]!));
        if (!heads.includes(anchor)) problems.push(`${f}: (${target}) → no heading '#${anchor}' there`);
      }
    }
  }
  assert.ok(checked >= 10, `only ${checked} relative links found`);
  assert.deepEqual(problems, []);
});
