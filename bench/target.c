/* Benchmark target. argv[1] = total threads (main + probe + idle ones).
 * The probe spins on CLOCK_MONOTONIC and keeps the largest gap it sees since
 * the last "arm": that gap is how long the target was stopped.
 * Commands on stdin: arm | gap | calls N (time N calls of work) | quit */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile long max_gap_ns, armed;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void *probe(void *arg)
{
    (void)arg;
    long last = now_ns();
    for (;;) {
        long t = now_ns();
        if (armed && t - last > max_gap_ns) max_gap_ns = t - last;
        last = t;
    }
    return NULL;
}

static void *idle(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&lock);
    for (;;) pthread_cond_wait(&never, &lock);
    return NULL;
}

__attribute__((noinline)) int work(int x) { return x * 3 + 1; }

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    pthread_t t;
    char line[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (threads >= 2) pthread_create(&t, NULL, probe, NULL);
    for (int i = 2; i < threads; i++) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        pthread_create(&t, &attr, idle, NULL);
    }
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        long n;
        if (!strncmp(line, "arm", 3)) { max_gap_ns = 0; armed = 1; printf("armed\n"); }
        else if (!strncmp(line, "gap", 3)) { armed = 0; printf("%ld\n", max_gap_ns); }
        else if (sscanf(line, "calls %ld", &n) == 1) {
            long t0 = now_ns(), acc = 0;
            for (long i = 0; i < n; i++) acc += work((int)i);
            long t1 = now_ns();
            printf("%ld %ld\n", t1 - t0, acc & 1);
        }
        else if (!strncmp(line, "quit", 4)) break;
    }
    return 0;
}
