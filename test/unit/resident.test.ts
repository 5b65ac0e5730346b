// core/resident.ts: which mappings may lose their pages (only clean read-only private file pages),
// and that dropping them in a live node process lowers its file-backed RSS and leaves it working.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import { droppable, parseSmaps } from '../../core/resident.js';

const mapping = (head: string, rss: number, anon: number) =>
  `${head}\nSize:               4096 kB\nRss:                ${rss} kB\nPss:                ${rss} kB\nAnonymous:          ${anon} kB\nVmFlags: rd mr mw me\n`;

test('parseSmaps reads each mapping with its Rss and Anonymous', () => {
  const m = parseSmaps(
    mapping('00400000-00b6e000 r--p 00000000 08:01 1234 /usr/bin/node', 5948, 0) +
      mapping('7f0000000000-7f0000001000 rw-p 00000000 00:00 0 ', 4, 4),
  );
  assert.equal(m.length, 2);
  assert.deepEqual(m[0], {
    start: 0x400000n,
    end: 0xb6e000n,
    perms: 'r--p',
    path: '/usr/bin/node',
    rssKiB: 5948,
    anonymousKiB: 0,
  });
  assert.equal(m[1]!.path, '');
  assert.equal(m[1]!.anonymousKiB, 4);
});

test('only read-only private file mappings without private pages are droppable', () => {
  const one = (head: string, rss = 100, anon = 0) => droppable(parseSmaps(mapping(head, rss, anon))[0]!);
  assert.equal(one('00b72000-0260e000 r-xp 00772000 08:01 1234 /usr/bin/node'), true, 'code');
  assert.equal(one('02601000-0563a000 r--p 02201000 08:01 1234 /usr/bin/node'), true, 'read-only data');
  // RELRO: relocated (copy-on-write) then made read-only: its pages are private data.
  assert.equal(one('0563a000-0563e000 r--p 05239000 08:01 1234 /usr/bin/node', 16, 16), false, 'relro');
  assert.equal(one('0563e000-0565d000 rw-p 0523d000 08:01 1234 /usr/bin/node', 124, 0), false, 'writable');
  assert.equal(one('7f0000000000-7f0010000000 rw-s 00000000 00:01 5 /memfd:tsvmm-ram (deleted)'), false, 'guest RAM');
  assert.equal(one('7f0000000000-7f0000001000 r--s 00000000 00:05 9 /dev/vfio/12'), false, 'shared');
  assert.equal(one('7f0000000000-7f0000001000 r--p 00000000 00:05 9 /dev/zero'), false, 'device');
  assert.equal(one('7f0000000000-7f0000001000 r--p 00000000 08:01 7 /tmp/x.so (deleted)'), false, 'deleted file');
  assert.equal(one('7f0000000000-7f0000001000 r--p 00000000 00:00 0 [vvar]'), false, 'no file');
  assert.equal(one('7f0000000000-7f0000001000 r-xp 00000000 08:01 7 /usr/lib/libc.so.6', 0), false, 'nothing resident');
});

test('dropCleanFilePages lowers a live process file-backed RSS and the process keeps running', () => {
  const script = `
    const { readFileSync } = require('node:fs');
    const rss = () => Object.fromEntries(readFileSync('/proc/self/status', 'utf8').split('\\n')
      .filter((l) => /^Rss(File|Anon):/.test(l)).map((l) => [l.split(':')[0], parseInt(l.split(':')[1])]));
    import(${JSON.stringify(join(projectRoot, 'dist/core/resident.js'))}).then(({ dropCleanFilePages }) => {
      const before = rss();
      const dropped = dropCleanFilePages();
      const after = rss();
      // Code, builtins and libraries still work after the unmapping: they come back from the page cache.
      const ok = require('node:crypto').createHash('sha256').update('x'.repeat(1e5)).digest('hex').length === 64
        && JSON.stringify(require('node:zlib').gunzipSync(require('node:zlib').gzipSync('abc')).toString()) === '"abc"';
      console.log(JSON.stringify({ before, after, dropped, ok }));
    });`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout) as {
    before: { RssFile: number; RssAnon: number };
    after: { RssFile: number; RssAnon: number };
    dropped: number;
    ok: boolean;
  };
  assert.equal(o.ok, true);
  assert.ok(o.dropped > 1024, `dropped ${o.dropped} KiB`);
  assert.ok(o.after.RssFile < o.before.RssFile / 2, `RssFile ${o.before.RssFile} → ${o.after.RssFile} kB`);
  // Nothing private was touched: anonymous memory did not shrink (no copy-on-write page was dropped).
  assert.ok(o.after.RssAnon >= o.before.RssAnon - 64, `RssAnon ${o.before.RssAnon} → ${o.after.RssAnon} kB`);
});
