// The seccomp BPF program for a policy (policy.ts): classic BPF over struct seccomp_data, as
// Firecracker's seccompiler and libseccomp emit it. The arch is checked first (a syscall of another
// ABI — i386 via int 0x80, x32 — has other numbers); then each allowed syscall in turn, the hot
// ones first, so KVM_RUN's ioctl costs a handful of instructions; anything else traps (SIGSYS).
import { SYSCALLS_X86_64, type SyscallName } from './syscalls.js';
import type { ArgCheck, Group } from './policy.js';

// linux/filter.h, linux/seccomp.h, linux/audit.h: ABI values.
const LD_W_ABS = 0x20,
  JEQ_K = 0x15,
  JGE_K = 0x35,
  AND_K = 0x54,
  RET_K = 0x06;
export const AUDIT_ARCH_X86_64 = 0xc000003e;
export const SECCOMP_RET_ALLOW = 0x7fff0000;
export const SECCOMP_RET_TRAP = 0x00030000;
export const SECCOMP_RET_ERRNO = 0x00050000;
const X32_SYSCALL_BIT = 0x40000000;
// struct seccomp_data: nr, arch, instruction_pointer, args[6] (little-endian: low word first).
const OFF_NR = 0,
  OFF_ARCH = 4,
  argLow = (i: number) => 16 + 8 * i,
  argHigh = (i: number) => 20 + 8 * i;

export interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}
const stmt = (code: number, k: number): Insn => ({ code, jt: 0, jf: 0, k: k >>> 0 });
const jump = (code: number, k: number, jt: number, jf: number): Insn => {
  if (jt > 255 || jf > 255) throw new Error('sandbox: BPF jump too long (split the rule)');
  return { code, jt, jf, k: k >>> 0 };
};

/** One alternative (all checks hold → allow), as instructions; a failed check jumps to its end. */
function alternative(checks: ArgCheck[]): Insn[] {
  // Each test: load a word, mask it, compare; 'fail' jumps are resolved once the length is known.
  const tests: { off: number; mask: number; value: number }[] = [];
  for (const c of checks) {
    const mask = c.mask ?? 0xffffffffffffffffn;
    const lo = Number(mask & 0xffffffffn),
      hi = Number(mask >> 32n);
    if (lo) tests.push({ off: argLow(c.arg), mask: lo, value: Number(c.value & 0xffffffffn) });
    if (hi) tests.push({ off: argHigh(c.arg), mask: hi, value: Number((c.value >> 32n) & 0xffffffffn) });
  }
  const out: Insn[] = [];
  const fails: number[] = [];
  for (const t of tests) {
    out.push(stmt(LD_W_ABS, t.off));
    if (t.mask !== 0xffffffff) out.push(stmt(AND_K, t.mask));
    fails.push(out.length);
    out.push({ code: JEQ_K, jt: 0, jf: 0, k: t.value >>> 0 });
  }
  out.push(stmt(RET_K, SECCOMP_RET_ALLOW));
  for (const i of fails) out[i] = jump(JEQ_K, out[i]!.k, 0, out.length - i - 1);
  return out;
}

export interface Program {
  insns: Insn[];
  /** The syscalls allowed (unconditionally or with argument checks), by name. */
  allowed: SyscallName[];
}

export function buildProgram(
  groups: Group[],
  errno: { name: SyscallName; errno: number }[],
  hot: SyscallName[],
): Program {
  type Entry = { nr: number; body: Insn[] };
  const byName = new Map<SyscallName, Entry>();
  for (const g of groups)
    for (const rule of g.allow) {
      const name = typeof rule === 'string' ? rule : rule.name;
      if (byName.has(name)) throw new Error(`sandbox policy: ${name} is listed twice`);
      const nr = SYSCALLS_X86_64[name];
      const body =
        typeof rule === 'string'
          ? [stmt(RET_K, SECCOMP_RET_ALLOW)]
          : [...rule.when.flatMap(alternative), stmt(RET_K, SECCOMP_RET_TRAP)];
      byName.set(name, { nr, body });
    }
  for (const e of errno) {
    if (byName.has(e.name)) throw new Error(`sandbox policy: ${e.name} is both allowed and refused`);
    byName.set(e.name, { nr: SYSCALLS_X86_64[e.name], body: [stmt(RET_K, SECCOMP_RET_ERRNO | (e.errno & 0xffff))] });
  }
  const order = [
    ...hot.filter((n) => byName.has(n)),
    ...[...byName.keys()].filter((n) => !hot.includes(n)).sort((a, b) => SYSCALLS_X86_64[a] - SYSCALLS_X86_64[b]),
  ];
  const insns: Insn[] = [
    stmt(LD_W_ABS, OFF_ARCH),
    jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
    stmt(RET_K, SECCOMP_RET_TRAP),
    stmt(LD_W_ABS, OFF_NR),
    jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
    stmt(RET_K, SECCOMP_RET_TRAP),
  ];
  // A holds nr from here on: every entry's body ends in a return, so no body falls through.
  for (const name of order) {
    const e = byName.get(name)!;
    insns.push(jump(JEQ_K, e.nr, 0, e.body.length), ...e.body);
  }
  insns.push(stmt(RET_K, SECCOMP_RET_TRAP));
  if (insns.length > 4096) throw new Error('sandbox: the BPF program exceeds 4096 instructions');
  return { insns, allowed: order.filter((n) => !errno.some((e) => e.name === n)) };
}

/** struct sock_filter[] as the kernel reads it: u16 code, u8 jt, u8 jf, u32 k (little-endian). */
export function encode(insns: Insn[]): Buffer {
  const b = Buffer.alloc(insns.length * 8);
  insns.forEach((x, i) => {
    b.writeUInt16LE(x.code, i * 8);
    b.writeUInt8(x.jt, i * 8 + 2);
    b.writeUInt8(x.jf, i * 8 + 3);
    b.writeUInt32LE(x.k >>> 0, i * 8 + 4);
  });
  return b;
}

/** What the program answers for a syscall: a classic-BPF interpreter for the unit tests. */
export function evaluate(insns: Insn[], data: { nr: number; arch?: number; args?: bigint[] }): number {
  const word = (off: number): number => {
    if (off === OFF_NR) return data.nr >>> 0;
    if (off === OFF_ARCH) return (data.arch ?? AUDIT_ARCH_X86_64) >>> 0;
    const i = Math.floor((off - 16) / 8);
    const v = data.args?.[i] ?? 0n;
    return Number(off % 8 === 0 ? v & 0xffffffffn : (v >> 32n) & 0xffffffffn);
  };
  let a = 0;
  for (let pc = 0; pc < insns.length; pc++) {
    const x = insns[pc]!;
    if (x.code === LD_W_ABS) a = word(x.k);
    else if (x.code === AND_K) a = (a & x.k) >>> 0;
    else if (x.code === JEQ_K) pc += a === x.k ? x.jt : x.jf;
    else if (x.code === JGE_K) pc += a >= x.k ? x.jt : x.jf;
    else if (x.code === RET_K) return x.k;
    else throw new Error(`unknown BPF opcode ${x.code}`);
  }
  throw new Error('BPF program fell off its end');
}
