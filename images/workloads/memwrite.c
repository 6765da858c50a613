/*
 * memwrite MIB SECONDS: writes a MIB-MiB buffer over and over for SECONDS,
 * a word in every 64 bytes (every page dirtied each pass), reading the
 * monotonic clock every 64 KiB. For the live-migration test: the host
 * moves the VM while this runs.
 *
 * Prints a progress line a second, and at the end:
 *   memwrite: done passes=N maxgap_ms=G gaps=[...] check=ok|bad
 * where maxgap_ms is the longest time between two clock reads (the pause
 * the guest saw), gaps lists every gap over 50 ms, and check says whether
 * every word holds what the last pass wrote (the result is right).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: memwrite MIB SECONDS\n");
    return 2;
  }
  size_t words = (size_t)atoi(argv[1]) << 20 >> 3;
  double seconds = atof(argv[2]);
  uint64_t *buf = calloc(words, 8);
  if (buf == NULL || words == 0) {
    fprintf(stderr, "memwrite: no memory\n");
    return 1;
  }
  double start = now_s(), last = start, next_report = start + 1, maxgap = 0;
  char gaps[1024] = "";
  size_t glen = 0;
  uint64_t pass = 0;
  while (last - start < seconds) {
    pass++;
    for (size_t i = 0; i < words; i += 8) {
      buf[i] = pass * 0x9e3779b97f4a7c15ULL ^ i;
      if ((i & 8191) == 0) {
        double t = now_s();
        double gap = t - last;
        if (gap > maxgap)
          maxgap = gap;
        if (gap > 0.05 && glen + 16 < sizeof(gaps))
          glen += snprintf(gaps + glen, sizeof(gaps) - glen, "%s%.0f", glen ? "," : "",
                           gap * 1e3);
        last = t;
      }
    }
    if (last >= next_report) {
      printf("memwrite: t=%.0f pass=%llu\n", last - start, (unsigned long long)pass);
      fflush(stdout);
      next_report += 1;
    }
  }
  int ok = 1;
  for (size_t i = 0; i < words; i += 8)
    ok &= buf[i] == (pass * 0x9e3779b97f4a7c15ULL ^ i);
  printf("memwrite: done passes=%llu maxgap_ms=%.0f gaps=[%s] check=%s\n",
         (unsigned long long)pass, maxgap * 1e3, gaps, ok ? "ok" : "bad");
  return ok ? 0 : 1;
}
