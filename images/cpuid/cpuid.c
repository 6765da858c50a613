/* Prints CPUID leaves as the guest sees them, one line each:
 *   cpuid leaf=0x40000001 sub=0 eax=... ebx=... ecx=... edx=...
 * Usage: cpuid LEAF[:SUBLEAF]...  (hexadecimal or decimal)
 * The end-to-end tests read the CPU template through it
 * (tests/tests/boot.rs, the_guest_sees_the_cpu_template_not_the_host). */
#include <cpuid.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char *end;
        unsigned long leaf = strtoul(argv[i], &end, 0);
        unsigned long sub = *end == ':' ? strtoul(end + 1, NULL, 0) : 0;
        unsigned int a, b, c, d;
        __cpuid_count((unsigned int)leaf, (unsigned int)sub, a, b, c, d);
        printf("cpuid leaf=0x%lx sub=%lu eax=0x%08x ebx=0x%08x ecx=0x%08x edx=0x%08x\n",
               leaf, sub, a, b, c, d);
    }
    return 0;
}
