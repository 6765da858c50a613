/* hashjoin: a memory-phase program (no perfhint code): a hash join over a
 * large table, in phases of fixed length so that a profile taken on one
 * machine holds on another.
 *
 *   hashjoin [MIB [SECONDS]]
 *
 *   scan   SECONDS / 2 of serial arithmetic on a small buffer (no memory)
 *   build  fills a table of MIB MiB (default 256) with keys, page by page
 *   probe  SECONDS (default 4) of random lookups into the whole table
 *   emit   the table freed, SECONDS / 2 of serial arithmetic again
 *
 * Prints "hashjoin: phase NAME" as each phase begins and, at the end,
 * "hashjoin: work done in N ms matches=M".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* xorshift64: cheap, repeatable keys. */
static uint64_t next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void phase(const char *name) {
  printf("hashjoin: phase %s\n", name);
  fflush(stdout);
}

/* Serial arithmetic for `secs` seconds; returns something to print. */
static uint64_t spin(double secs) {
  uint64_t s = 88172645463325252ull, acc = 0;
  double end = now() + secs;
  while (now() < end) {
    for (int i = 0; i < 4096; i++)
      acc += next(&s) >> 60;
  }
  return acc;
}

int main(int argc, char **argv) {
  long mib = argc > 1 ? atol(argv[1]) : 256;
  double secs = argc > 2 ? atof(argv[2]) : 4.0;
  if (mib < 1 || mib > 65536 || !(secs > 0.0 && secs < 3600.0)) {
    fprintf(stderr, "hashjoin: usage: hashjoin [MIB 1..65536 [SECONDS 0..3600]]\n");
    return 2;
  }
  double start = now();
  phase("scan");
  uint64_t sum = spin(secs / 2);

  phase("build");
  size_t slots = (size_t)mib * 1024 * 1024 / sizeof(uint64_t);
  uint64_t *table = malloc(slots * sizeof(uint64_t));
  if (!table) {
    fprintf(stderr, "hashjoin: cannot allocate %ld MiB\n", mib);
    return 1;
  }
  uint64_t s = 2463534242ull;
  for (size_t i = 0; i < slots; i++)
    table[i] = next(&s) | 1;

  phase("probe");
  uint64_t matches = 0;
  double end = now() + secs;
  while (now() < end) {
    for (int i = 0; i < 4096; i++) {
      uint64_t k = next(&s);
      matches += (table[k % slots] & 0xff) == (k & 0xff);
    }
  }
  free(table);

  phase("emit");
  sum += spin(secs / 2);
  printf("hashjoin: work done in %.0f ms matches=%llu check=%llu\n", (now() - start) * 1000.0,
         (unsigned long long)matches, (unsigned long long)(sum & 0xffff));
  return 0;
}
