import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as tick } from 'node:timers/promises';
import { Serial16550 } from '../../hw/serial-16550.js';

function uart() {
  const out: number[] = [];
  const irq: boolean[] = [];
  const s = new Serial16550({ output: (b) => out.push(...b), irq: { setLevel: (l) => irq.push(l) } });
  const ops = s.region.ops!;
  return { s, out, irq, r: (o: number) => Number(ops.read(o, 1)), w: (o: number, v: number) => ops.write(o, 1, v) };
}

test('THR writes come out batched, in order', async () => {
  const u = uart();
  for (const c of 'hello\n') u.w(0, c.charCodeAt(0));
  assert.equal(u.out.length, 0);
  await tick();
  assert.equal(String.fromCharCode(...u.out), 'hello\n');
});

test('LSR always shows an empty transmitter; DR follows input', () => {
  const u = uart();
  assert.equal(u.r(5) & 0x61, 0x60);
  u.s.input(new Uint8Array([0x41]));
  assert.equal(u.r(5) & 1, 1);
  assert.equal(u.r(0), 0x41);
  assert.equal(u.r(5) & 1, 0);
});

test('divisor latch is behind DLAB and does not disturb IER', () => {
  const u = uart();
  u.w(1, 0x00);
  u.w(3, 0x80);
  u.w(0, 0x01);
  u.w(1, 0x02);
  assert.equal(u.r(0), 0x01);
  assert.equal(u.r(1), 0x02);
  u.w(3, 0x03);
  assert.equal(u.r(1), 0x00);
  assert.equal(u.r(3), 0x03);
});

test('THRI: raised when enabled, cleared by reading IIR, raised again by a THR write', () => {
  const u = uart();
  u.w(1, 0x02);
  assert.deepEqual(u.irq, [true]);
  assert.equal(u.r(2) & 0x0f, 0x02);
  assert.deepEqual(u.irq, [true, false]);
  assert.equal(u.r(2) & 0x0f, 0x01);
  u.w(0, 0x41);
  assert.deepEqual(u.irq, [true, false, true]);
});

test('RX data interrupt has priority and clears when the FIFO drains', () => {
  const u = uart();
  u.w(1, 0x01);
  u.s.input(new Uint8Array([1, 2]));
  assert.equal(u.r(2) & 0x0f, 0x04);
  u.r(0);
  u.r(0);
  assert.equal(u.r(2) & 0x0f, 0x01);
  assert.deepEqual(u.irq, [true, false]);
});

test('loopback: output feeds input and modem lines loop (8250 probe)', async () => {
  const u = uart();
  u.w(4, 0x10 | 0x0a);
  assert.equal(u.r(6) & 0xf0, 0x90);
  u.w(0, 0x5a);
  assert.equal(u.r(0), 0x5a);
  await tick();
  assert.equal(u.out.length, 0);
});
