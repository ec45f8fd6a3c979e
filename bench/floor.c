/* The floor: the least a ptrace-based patcher can stop a process for.
 * Seize and interrupt every thread, read each one's registers, detach all.
 * Usage: floor PID   (prints the microseconds from first interrupt to last detach) */
#define _GNU_SOURCE
#include <dirent.h>
#include <elf.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    static int tids[65536];
    int n = 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/task", argv[1]);
    DIR *d = opendir(path);
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') tids[n++] = atoi(e->d_name);
    closedir(d);
    for (int i = 0; i < n; i++) ptrace(PTRACE_SEIZE, tids[i], 0, 0);
    double t0 = now_us();
    for (int i = 0; i < n; i++) ptrace(PTRACE_INTERRUPT, tids[i], 0, 0);
    for (int i = 0; i < n; i++) {
        int status;
        waitpid(tids[i], &status, __WALL);
        struct user_regs_struct regs;
        struct iovec iov = {&regs, sizeof regs};
        ptrace(PTRACE_GETREGSET, tids[i], NT_PRSTATUS, &iov);
    }
    for (int i = 0; i < n; i++) ptrace(PTRACE_DETACH, tids[i], 0, 0);
    printf("%.1f\n", now_us() - t0);
    return 0;
}
