/* Entry, multiboot header, GDT, stack and the 256 interrupt stubs.
 *
 * Entered (by QEMU -kernel, tsvmm's multiboot loader, or tsvmm's flat loader at the load
 * address) in 32-bit protected mode, paging off, with EAX = 0x2BADB002 and EBX = the
 * multiboot info. _start is the first byte of the image, so a flat load can enter at the
 * load address; the multiboot header follows it (it must be in the first 8 KiB, 4-aligned). */

#define MB_HEADER_MAGIC 0x1BADB002
/* bit 0: page-align modules, bit 1: please provide mem_lower/mem_upper. No bit 16 (a.out
 * kludge): the ELF program headers say where to load. */
#define MB_HEADER_FLAGS 0x00000003

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10

	.code32
	.section .text.entry, "ax"
	.globl _start
_start:
	jmp real_start

	.align 4
	.globl multiboot_header
multiboot_header:
	.long MB_HEADER_MAGIC
	.long MB_HEADER_FLAGS
	.long -(MB_HEADER_MAGIC + MB_HEADER_FLAGS)

real_start:
	cli
	cld
	lgdt gdt_desc
	ljmp $KERNEL_CS, $1f
1:	mov %eax, %edx			/* the boot magic; %ebx keeps the info pointer */
	mov $KERNEL_DS, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %fs
	mov %eax, %gs
	mov %eax, %ss
	mov $stack_top, %esp
	xor %ebp, %ebp
	push %ebx			/* kmain(magic, info); kmain clears .bss once it has copied the info */
	push %edx
	call kmain
2:	cli
	hlt
	jmp 2b

/* Interrupt stubs: 256 of them, 16 bytes apart (irq.c computes stub = isr_stubs + 16*v).
 * Each pushes a dummy error code where the CPU does not push one, then the vector, so the
 * common path sees one frame layout (struct irq_frame in irq.c). */
	.text
	.align 16
	.globl isr_stubs
isr_stubs:
	.set vec, 0
	.rept 256
	.align 16
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushl $0
	.endif
	pushl $vec
	jmp isr_common
	.set vec, vec + 1
	.endr

isr_common:
	pusha
	cld
	push %esp			/* isr_dispatch(struct irq_frame *) */
	call isr_dispatch
	add $4, %esp
	popa
	add $8, %esp			/* vector and error code */
	iret

	.section .rodata
	.align 8
gdt:
	.quad 0				/* null */
	.quad 0x00cf9a000000ffff	/* 0x08: code, base 0, limit 4 GiB, 32-bit */
	.quad 0x00cf92000000ffff	/* 0x10: data, base 0, limit 4 GiB */
gdt_end:
	.align 4
	.word 0
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

	/* Not in .bss: kmain clears .bss while running on this stack. */
	.section .stack, "aw", @nobits
	.align 16
stack:
	.skip 16384
stack_top:

	.section .note.GNU-stack, "", @progbits
