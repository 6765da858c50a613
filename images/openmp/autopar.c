/* autopar: plain C loops with no OpenMP pragma and no perfhint code. Built
 * with clang-14's Polly (-mllvm -polly -mllvm -polly-parallel
 * -mllvm -polly-omp-backend=LLVM -fopenmp), the compiler turns the sweeps'
 * outer loops into libomp parallel regions (__kmpc_fork_call) by itself.
 *
 *   autopar [SWEEPS]        (default 200)
 *
 * SIGTERM or SIGINT stops it after the current sweep. Prints
 * "autopar: sweeps=S checksum=C" (S: the sweeps done).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#define N 512

static double a[N][N], b[N][N];
static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

/* One Jacobi-style sweep from a into b, then back: each (i, j) depends only
 * on the previous grid, so the i loops are parallel. Not inlined, so that
 * each call is one static-control region with constant bounds for Polly. */
__attribute__((noinline)) static void sweep(void) {
  for (int i = 1; i < N - 1; i++)
    for (int j = 1; j < N - 1; j++)
      b[i][j] = 0.25 * (a[i - 1][j] + a[i + 1][j] + a[i][j - 1] + a[i][j + 1]);
  for (int i = 1; i < N - 1; i++)
    for (int j = 1; j < N - 1; j++)
      a[i][j] = b[i][j];
}

int main(int argc, char **argv) {
  int sweeps = argc > 1 ? atoi(argv[1]) : 200;
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  for (int i = 0; i < N; i++)
    for (int j = 0; j < N; j++)
      a[i][j] = (i == 0 || j == 0) ? 1.0 : 0.0;
  int done = 0;
  while (done < sweeps && !stop) {
    sweep();
    done++;
  }
  double c = 0.0;
  for (int i = 0; i < N; i++)
    for (int j = 0; j < N; j++)
      c += a[i][j];
  printf("autopar: sweeps=%d checksum=%.6f\n", done, c);
  return 0;
}
