/* sampler: the guest's demand and allocation, one line every INTERVAL ms
 * (default 100), for resize-bench and the demo:
 *
 *   sample t_ms=T running=W procs=P cpus=C mem_total_kib=M mem_used_kib=U
 *
 *   T  /proc/uptime in ms
 *   W  threads of cgroup CGROUP (its cgroup.threads) running or runnable
 *   P  the guest's runnable tasks (procs_running), less this sampler
 *   C  CPUs online (/sys/devices/system/cpu/online)
 *   M  MemTotal; U = MemTotal - MemAvailable
 *
 *   sampler CGROUP [INTERVAL_MS]
 *
 * One process reading /proc, where the shell loop it replaces forked awk,
 * sed and cat every sample: under emulation that cost a one-vCPU guest a
 * large share of its only CPU.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Reads file `path` into buf (NUL-terminated); returns its length or -1. */
static long slurp(const char *path, char *buf, size_t size) {
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  size_t n = fread(buf, 1, size - 1, f);
  fclose(f);
  buf[n] = '\0';
  return (long)n;
}

/* The value after `key` in text, or -1. */
static long long field(const char *text, const char *key) {
  const char *p = strstr(text, key);
  return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

/* CPUs in a list such as "0-2,4". */
static int count_cpus(const char *list) {
  int n = 0;
  const char *p = list;
  while (*p >= '0' && *p <= '9') {
    char *end;
    long a = strtol(p, &end, 10), b = a;
    if (*end == '-')
      b = strtol(end + 1, &end, 10);
    if (b >= a && b - a < 4096)
      n += (int)(b - a + 1);
    p = *end == ',' ? end + 1 : end;
  }
  return n;
}

/* Threads of the cgroup in state R. */
static int running(const char *cgroup) {
  char path[512], stat[1024];
  snprintf(path, sizeof path, "%s/cgroup.threads", cgroup);
  FILE *f = fopen(path, "r");
  if (!f)
    return 0;
  int n = 0;
  long tid;
  while (fscanf(f, "%ld", &tid) == 1) {
    snprintf(path, sizeof path, "/proc/%ld/stat", tid);
    if (slurp(path, stat, sizeof stat) < 0)
      continue;
    /* The state follows the command's closing parenthesis. */
    const char *p = strrchr(stat, ')');
    if (p && p[1] == ' ' && p[2] == 'R')
      n++;
  }
  fclose(f);
  return n;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: sampler CGROUP [INTERVAL_MS]\n");
    return 2;
  }
  long interval = argc > 2 ? atol(argv[2]) : 100;
  if (interval < 10 || interval > 60000)
    interval = 100;
  static char buf[16384];
  struct timespec pause = {interval / 1000, (interval % 1000) * 1000000L};
  for (;;) {
    double up = 0;
    if (slurp("/proc/uptime", buf, sizeof buf) > 0)
      up = atof(buf);
    long long procs = slurp("/proc/stat", buf, sizeof buf) > 0 ? field(buf, "procs_running ") : 0;
    int cpus = slurp("/sys/devices/system/cpu/online", buf, sizeof buf) > 0 ? count_cpus(buf) : 0;
    long long total = -1, avail = -1;
    if (slurp("/proc/meminfo", buf, sizeof buf) > 0) {
      total = field(buf, "MemTotal:");
      avail = field(buf, "MemAvailable:");
    }
    printf("sample t_ms=%lld running=%d procs=%lld cpus=%d mem_total_kib=%lld mem_used_kib=%lld\n",
           (long long)(up * 1000.0), running(argv[1]), procs > 0 ? procs - 1 : 0, cpus, total,
           total - avail);
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
