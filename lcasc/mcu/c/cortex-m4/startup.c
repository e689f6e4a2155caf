/* startup.c - bare-metal start for the Cortex-M4 check: vector table, .data/.bss set-up, FPU on, SysTick
 * as an instruction counter (with `qemu -icount shift=0` the emulated clock advances by a fixed amount
 * per executed instruction; the harness calibrates ticks per instruction on a loop of known length),
 * stack painting for the high-water mark, and semihosting output. */
#include <stdint.h>
#include <string.h>

#include "m4_support.h"

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_bottom, __stack_top;
int main(void);

static volatile uint32_t systick_wraps;

void lcasc_reset(void);
static void default_handler(void) { lcasc_exit(3); }
static void systick_handler(void) { systick_wraps++; }

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))&__stack_top, lcasc_reset, default_handler, default_handler, default_handler,
    default_handler, default_handler, 0, 0, 0, 0, default_handler, default_handler, 0, default_handler,
    systick_handler,
};

void lcasc_reset(void)
{
    uint32_t *src = &__data_load, *dst = &__data_start;
    while (dst < &__data_end) *dst++ = *src++;
    for (dst = &__bss_start; dst < &__bss_end; ++dst) *dst = 0;
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20; /* CPACR: full access to CP10/CP11 (the FPU) */
    __asm__ volatile("dsb\n isb");
    lcasc_exit(main());
}

#define SYST_CSR (*(volatile uint32_t *)0xE000E010)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018)

void lcasc_ticks_start(void)
{
    SYST_RVR = 0xFFFFFF;
    SYST_CVR = 0;
    systick_wraps = 0;
    SYST_CSR = 7; /* processor clock, interrupt on wrap, enabled */
    while (SYST_CVR == 0) {
    } /* the first tick loads the reload value; count from there */
    systick_wraps = 0;
}

uint64_t lcasc_ticks(void)
{
    uint32_t w, v;
    do {
        w = systick_wraps;
        v = SYST_CVR;
    } while (w != systick_wraps);
    return (uint64_t)w * 0x1000000u + (0xFFFFFFu - v);
}

/* Paint the free stack below the caller's frame; lcasc_stack_used() then finds the deepest byte written. */
static uint8_t *painted_top;
void lcasc_stack_paint(void)
{
    uint8_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    painted_top = sp - 64; /* leave this function's own frame alone */
    for (uint8_t *p = (uint8_t *)&__stack_bottom; p < painted_top; ++p) *p = 0xA5;
}

uint32_t lcasc_stack_used(void)
{
    const uint8_t *p = (const uint8_t *)&__stack_bottom;
    while (p < painted_top && *p == 0xA5) ++p;
    return (uint32_t)(painted_top + 64 - p);
}

/* ARM semihosting: bkpt 0xAB, r0 = operation, r1 = argument. */
static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void lcasc_puts(const char *s) { semihost(0x04, s); /* SYS_WRITE0 */ }

void lcasc_exit(int code)
{
    /* SYS_EXIT: ADP_Stopped_ApplicationExit (exit status 0) or ADP_Stopped_RunTimeErrorUnknown (1) */
    semihost(0x18, (const void *)(uintptr_t)(code == 0 ? 0x20026 : 0x20023));
    for (;;) {
    }
}
