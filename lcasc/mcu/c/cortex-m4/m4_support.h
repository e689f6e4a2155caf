/* m4_support.h - what startup.c gives the Cortex-M4 harness. */
#ifndef LCASC_M4_SUPPORT_H
#define LCASC_M4_SUPPORT_H
#include <stdint.h>
void lcasc_ticks_start(void);
uint64_t lcasc_ticks(void);
void lcasc_stack_paint(void);
uint32_t lcasc_stack_used(void);
void lcasc_puts(const char *s);
void lcasc_exit(int code);
#endif
