/* cpu-onliner: brings the vCPUs perfvmm hot-adds online as the kernel
 * announces them, as a udev rule would on a full distribution
 * (SUBSYSTEM=="cpu", ACTION=="add", ATTR{online}="1").
 *
 *   cpu-onliner
 *
 * Onlines every CPU present and offline at start, then sleeps in recv() on
 * the kernel's uevent netlink socket and onlines each CPU named by an "add"
 * event. It replaces a shell loop that polled every 50 ms: that loop forked
 * 20 times a second, a share of a one-vCPU guest's only CPU under
 * emulation, and added up to 50 ms to every grow.
 *
 * Only "add" events: a CPU the kernel takes offline to eject it must not be
 * brought back. Prints nothing unless a CPU cannot be onlined.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CPU_DEVPATH "/devices/system/cpu/cpu"

/* Writes "1" to CPU n's online file; retries for about a second while the
 * kernel is still setting the CPU up. 0 on success or when there is no
 * such file (CPU 0 has none). */
static int online(unsigned n) {
  char path[96];
  snprintf(path, sizeof path, "/sys%s%u/online", CPU_DEVPATH, n);
  for (int attempt = 0; attempt < 100; attempt++) {
    int fd = open(path, O_RDWR);
    if (fd < 0 && errno == ENOENT)
      return 0;
    if (fd >= 0) {
      char v = '0';
      ssize_t got = pread(fd, &v, 1, 0);
      ssize_t put = got == 1 && v == '1' ? 1 : write(fd, "1", 1);
      close(fd);
      if (put == 1)
        return 0;
    }
    struct timespec ten_ms = {0, 10 * 1000 * 1000};
    nanosleep(&ten_ms, NULL);
  }
  fprintf(stderr, "cpu-onliner: cpu%u: cannot online: %s\n", n, strerror(errno));
  return -1;
}

/* The CPU number of an "add@/devices/system/cpu/cpuN" event, or -1. */
static long added_cpu(const char *msg) {
  static const char prefix[] = "add@" CPU_DEVPATH;
  if (strncmp(msg, prefix, sizeof prefix - 1) != 0)
    return -1;
  const char *p = msg + sizeof prefix - 1;
  long n = 0;
  if (*p < '0' || *p > '9')
    return -1;
  for (; *p >= '0' && *p <= '9'; p++) {
    n = n * 10 + (*p - '0');
    if (n > 8192)
      return -1;
  }
  return *p == '\0' ? n : -1;
}

int main(void) {
  int s = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
  struct sockaddr_nl addr = {.nl_family = AF_NETLINK, .nl_groups = 1};
  if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
    perror("cpu-onliner: uevent socket");
    return 1;
  }
  /* Listening first, then the scan: a CPU added in between is seen twice
   * (harmless), never missed. */
  for (unsigned n = 1; n < 256; n++)
    online(n);
  char buf[8192];
  for (;;) {
    ssize_t len = recv(s, buf, sizeof buf - 1, 0);
    if (len < 0) {
      if (errno == EINTR || errno == ENOBUFS)
        continue;
      perror("cpu-onliner: recv");
      return 1;
    }
    buf[len] = '\0';
    long n = added_cpu(buf);
    if (n > 0)
      online((unsigned)n);
  }
}
