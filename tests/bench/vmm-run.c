/* Runs a VMM and times it from its exec, for boot-bench's side-by-side
 * runs (tests/src/bin/boot-bench.rs):
 *
 *   vmm-run LABEL MARKER CMD [ARGS...]
 *
 * passes the VMM's output through, and prints when it ends
 *
 *   vmm-run: LABEL init_ms=T exit_ms=T maxrss_kib=N status=S
 *
 * init_ms: from just before exec to the first output line holding MARKER
 * (the guest's /init printing it on the serial console); exit_ms: to the
 * VMM's exit; maxrss_kib: its peak resident set (wait4's ru_maxrss). */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: vmm-run LABEL MARKER CMD [ARGS...]\n");
        return 2;
    }
    const char *label = argv[1], *marker = argv[2];
    int fds[2];
    if (pipe(fds) != 0) {
        perror("vmm-run: pipe");
        return 1;
    }
    double start = now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        perror("vmm-run: fork");
        return 1;
    }
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execv(argv[3], argv + 3);
        perror("vmm-run: exec");
        _exit(127);
    }
    close(fds[1]);
    FILE *out = fdopen(fds[0], "r");
    char line[4096];
    double init = -1;
    while (out && fgets(line, sizeof line, out)) {
        if (init < 0 && strstr(line, marker))
            init = now_ms() - start;
        fputs(line, stdout);
    }
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    wait4(pid, &status, 0, &ru);
    double end = now_ms() - start;
    printf("vmm-run: %s init_ms=%.1f exit_ms=%.1f maxrss_kib=%ld status=%d\n", label, init, end,
           ru.ru_maxrss, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    fflush(stdout);
    return 0;
}
