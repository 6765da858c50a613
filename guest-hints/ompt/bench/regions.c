/* regions: a region-heavy OpenMP program for measuring the OMPT tool's
 * overhead: COUNT (default 100000) parallel regions back to back, each
 * summing WORK (default 0: an empty region) array elements split among the
 * team. Prints "regions: count=N work=W seconds=S". */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_WORK (1 << 20)

static double x[MAX_WORK];

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  long count = argc > 1 ? atol(argv[1]) : 100000;
  int work = argc > 2 ? atoi(argv[2]) : 0;
  if (work < 0 || work > MAX_WORK)
    work = MAX_WORK;
  for (int i = 0; i < work; i++)
    x[i] = (double)(i % 13);
  volatile double sink = 0.0;
  double start = now();
  for (long r = 0; r < count; r++) {
    double sum = 0.0;
#pragma omp parallel for reduction(+ : sum)
    for (int i = 0; i < work; i++)
      sum += x[i];
    sink += sum;
  }
  printf("regions: count=%ld work=%d seconds=%.6f\n", count, work, now() - start);
  return sink < 0.0;
}
