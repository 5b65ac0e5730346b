// RAM above 4 GiB on /dev/kvm: a 6 GiB multiboot guest finds its high RAM in the multiboot memory
// map, writes a pattern there through PAE paging and reads it back (test=highmem); the host side
// reads the same pattern through tsvmm's views of guest RAM and through the memory API.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { runGuest } from '../helpers/guest.js';
import type { Machine } from '../../machine/machine.js';
import { inside } from '../helpers/inside.js';

const GiB = 2 ** 30;
const HIGH = 4 * GiB,
  LOW_END = 3 * GiB;
/** The guest's pattern (guest/src/test-highmem.c) for the word at physical address pa. */
const pattern = (pa: number) =>
  (Math.imul(Number((BigInt(pa) >> 2n) & 0xffffffffn), 2654435761 | 0) ^ Math.floor(pa / 2 ** 32) ^ 0x5a5a0000) >>> 0;
const memTotal = () => Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;

test(
  '6 GiB guest: high RAM in the multiboot map at 4 GiB, a pattern written there by the guest reads back on both sides',
  { timeout: 120_000 },
  async () => {
    // Not a skip: npm run test:kvm gives the test host 8 GiB when it runs these tests there.
    assert.ok(
      memTotal() >= 6.2 * GiB,
      `host has ${Math.round(memTotal() / 2 ** 20)} MiB of RAM; a 6 GiB guest needs more (the test host: --memory 8192)`,
    );
    const spots = [HIGH, HIGH + 1.5 * GiB, HIGH + 3 * GiB - 2 ** 21];
    let hostSide = '';
    const check = (m: Machine) => {
      // The guest has written and verified its pattern: read it through the views (offset in RAM
      // = physical address - 4 GiB + 3 GiB) and through the memory API (emulated accesses).
      for (const pa of spots) {
        // inside: guest RAM through its host view: no interface shows it
        const v = inside(m).guestRam.view(pa - HIGH + LOW_END, 0x10000);
        const dv = new DataView(v.buffer, v.byteOffset, v.byteLength);
        for (let i = 0; i < 0x10000; i += 4) {
          if (dv.getUint32(i, true) !== pattern(pa + i)) {
            hostSide += `view 0x${(pa + i).toString(16)}: 0x${dv.getUint32(i, true).toString(16)} `;
            break;
          }
        }
        // inside: emulated accesses through the memory API: no interface makes them
        if (inside(m).vm.memory.read(pa + 0x100, 4) !== pattern(pa + 0x100))
          hostSide += `memory API 0x${(pa + 0x100).toString(16)} `;
      }
      // An emulated access straddling two of tsvmm's 1 GiB views (at physical 5 GiB).
      // inside: emulated accesses through the memory API: no interface makes them
      inside(m).vm.memory.write(5 * GiB - 2, 4, 0x11223344);
      if (
        inside(m).vm.memory.read(5 * GiB - 2, 4) !== 0x11223344 ||
        inside(m).guestRam.view(5 * GiB - HIGH + LOW_END, 2)[1] !== 0x11
      )
        hostSide += 'straddling access ';
    };
    const r = await runGuest({
      cmdline: 'test=highmem',
      config: { memory: '6G' },
      timeoutMs: 100_000,
      onLine: (line, m) => {
        if (line === 'highmem: ok') check(m);
      },
      inspect: (m) => {
        const slots = m.inspect().memslots;
        assert.ok(
          slots.some((s) => s.guestAddr === HIGH && s.size === 3 * GiB),
          `a memslot for the 3 GiB above 4 GiB: ${slots.map((s) => `0x${s.guestAddr.toString(16)}+0x${s.size.toString(16)}`).join(' ')}`,
        );
        // inside: the e820 map the loaders get: no interface shows it
        assert.ok(inside(m).e820.some((e) => e.addr === HIGH && e.size === 3 * GiB && e.type === 1));
      },
    });
    assert.equal(r.status, 0, `${r.reason}\n${r.output}`);
    assert.ok(r.lines.includes('highmem: mmap 0x100000000 len 0xc0000000 type 1'), r.output);
    assert.ok(r.lines.includes('highmem: mmap 0x100000 len 0xbff00000 type 1'), r.output);
    for (const pa of spots) assert.ok(r.lines.includes(`highmem: spot 0x${pa.toString(16)} ok`), r.output);
    assert.ok(r.lines.includes('highmem: ram above 4G at 0x100000000, 3072 MiB'), r.output);
    assert.ok(r.lines.includes('highmem: ok'), r.output);
    assert.equal(hostSide, '', hostSide);
  },
);
