/* Application-processor trampoline (test=smp, smp.c). smp.c copies ap_tramp_start..ap_tramp_end
 * to AP_TRAMPOLINE (0x8000) and sends INIT-SIPI-SIPI with vector 0x08: the AP starts in real
 * mode at 0800:0000, loads its own flat GDT, enters 32-bit protected mode and jumps to
 * ap_start32 in the image, which takes the stack smp.c left in ap_stack_top and calls ap_main(). */
#define AP_CS 0x08
#define AP_DS 0x10

	.section .text
	.code16
	.globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
	cli
	mov %cs, %ax
	mov %ax, %ds
	lgdtl (ap_gdt_desc - ap_tramp_start)
	mov %cr0, %eax
	or $1, %eax
	mov %eax, %cr0
	ljmpl $AP_CS, $ap_start32
	.align 8
ap_gdt:
	.quad 0
	.quad 0x00cf9a000000ffff	/* 0x08: code, flat, 32-bit */
	.quad 0x00cf92000000ffff	/* 0x10: data, flat */
ap_gdt_desc:
	.word ap_gdt_desc - ap_gdt - 1
	.long 0x8000 + (ap_gdt - ap_tramp_start)	/* linear: where the copy lives */
ap_tramp_end:

	.code32
ap_start32:
	mov $AP_DS, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %fs
	mov %eax, %gs
	mov %eax, %ss
	mov ap_stack_top, %esp
	xor %ebp, %ebp
	call ap_main
1:	cli
	hlt
	jmp 1b

	.section .note.GNU-stack, "", @progbits
