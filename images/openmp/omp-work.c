/* omp-work: an ordinary OpenMP program (no perfhint code) that runs many
 * short parallel regions, as an iterative solver would.
 *
 *   omp-work [SECONDS [BURSTS [GAP]]]
 *
 * Runs BURSTS (default 1) bursts of SECONDS (default 2) of back-to-back
 * parallel regions, with GAP seconds (default 0) of serial sleep between
 * them. SIGTERM or SIGINT ends the work early; the result is still printed.
 * The team size is OpenMP's own choice (OMP_NUM_THREADS, else the CPUs
 * online).
 *
 * Prints "omp-work: threads=N regions=R check=ok" (R counts every parallel
 * region, the first one that asks for the team size included) when every
 * region's reduction matched the serial result, and "omp-work: gap" on
 * standard error at each serial gap.
 */
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define N 4096

static double x[N];
static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static double seconds_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_seconds(double s) {
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
  double limit = argc > 1 ? atof(argv[1]) : 2.0;
  int bursts = argc > 2 ? atoi(argv[2]) : 1;
  double gap = argc > 3 ? atof(argv[3]) : 0.0;
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  double serial = 0.0;
  for (int i = 0; i < N; i++) {
    x[i] = (double)(i % 97);
    serial += x[i];
  }
  int threads = 0;
#pragma omp parallel
  {
#pragma omp single
    threads = omp_get_num_threads();
  }
  long regions = 1;
  int bad = 0;
  for (int b = 0; b < bursts && !stop; b++) {
    if (b > 0) {
      fprintf(stderr, "omp-work: gap\n");
      sleep_seconds(gap);
    }
    double start = seconds_now();
    do {
      long k = regions % 7 + 1;
      double sum = 0.0;
#pragma omp parallel for reduction(+ : sum)
      for (int i = 0; i < N; i++)
        sum += x[i] * (double)k;
      if (sum != serial * (double)k)
        bad++;
      regions++;
    } while (!stop && seconds_now() - start < limit);
  }
  printf("omp-work: threads=%d regions=%ld check=%s\n", threads, regions,
         bad == 0 ? "ok" : "FAILED");
  return bad != 0;
}
