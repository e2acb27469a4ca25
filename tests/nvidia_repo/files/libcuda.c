/* servekit test stand-in for libcuda.so.1 of driver VERSION: the CUDA driver API calls that
 * servekit's CUDA check makes, answered for the GPUs in /etc/servekit-test/hardware and the state
 * the stand-in driver leaves behind. Like the real library: no module loaded -> 100 (no device),
 * a module of another version -> 803 (driver mismatch), NVSwitches without a running Fabric
 * Manager -> 802 (system not ready) when a context is created.
 * Build: gcc -shared -fPIC -DVERSION='"580.95.05"' -o libcuda.so.1 libcuda.c
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;

static int gpu_count, nvswitches, initialised;
static long long memory_mib;
static char gpu_name[256];
static char path_buffer[512];

static const char *in_root(const char *path) {
    const char *root = getenv("SERVEKIT_STANDIN_ROOT");
    snprintf(path_buffer, sizeof path_buffer, "%s%s", root ? root : "", path);
    return path_buffer;
}

static void read_hardware(void) {
    char line[512];
    FILE *file = fopen(in_root("/etc/servekit-test/hardware"), "r");
    if (!file) return;
    while (fgets(line, sizeof line, file)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "GPU_COUNT=", 10)) gpu_count = atoi(line + 10);
        if (!strncmp(line, "NVSWITCHES=", 11)) nvswitches = atoi(line + 11);
        if (!strncmp(line, "GPU_MEMORY_MIB=", 15)) memory_mib = atoll(line + 15);
        if (!strncmp(line, "GPU_NAME=", 9)) {
            char *name = line + 9;
            if (*name == '"' || *name == '\'') name++;
            name[strcspn(name, "\"'")] = 0;
            snprintf(gpu_name, sizeof gpu_name, "%s", name);
        }
    }
    fclose(file);
}

static int loaded_version(char *out, size_t size) {
    char line[512];
    FILE *file = fopen(in_root("/proc/driver/nvidia/version"), "r");
    /* The stand-in's /proc/driver is a tmpfs mounted over procfs: a unit with ProtectProc= or
     * ProcSubset= gets a new procfs instance without it (the real driver's entries are procfs's
     * own and stay visible there), so the module stand-in leaves a copy under /run too. */
    if (!file) file = fopen(in_root("/run/servekit-standin/nvidia-version"), "r");
    if (!file) return 0;
    int found = 0;
    if (fgets(line, sizeof line, file)) {
        char *start = strstr(line, "  ");
        while (start && !(start[2] >= '0' && start[2] <= '9')) start = strstr(start + 2, "  ");
        if (start) {
            start += 2;
            size_t length = strspn(start, "0123456789.");
            snprintf(out, size, "%.*s", (int)length, start);
            found = 1;
        }
    }
    fclose(file);
    return found;
}

CUresult cuInit(unsigned int flags) {
    char version[64];
    (void)flags;
    if (!loaded_version(version, sizeof version)) return 100;
    if (strcmp(version, VERSION)) return 803;
    read_hardware();
    initialised = 1;
    return gpu_count > 0 ? 0 : 100;
}

CUresult cuDriverGetVersion(int *version) {
    *version = 13000;
    return 0;
}

CUresult cuDeviceGetCount(int *count) {
    if (!initialised) return 3;
    *count = gpu_count;
    return 0;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    if (!initialised) return 3;
    if (ordinal < 0 || ordinal >= gpu_count) return 101;
    *device = ordinal;
    return 0;
}

CUresult cuDeviceGetName(char *name, int length, CUdevice device) {
    (void)device;
    snprintf(name, (size_t)length, "%s", gpu_name);
    return 0;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice device) {
    (void)device;
    *bytes = (size_t)memory_mib * 1048576u;
    return 0;
}

CUresult cuCtxCreate_v2(CUcontext *context, unsigned int flags, CUdevice device) {
    (void)flags;
    (void)device;
    if (nvswitches > 0 && access(in_root("/run/nvidia-fabricmanager/running"), F_OK) != 0)
        return 802;
    *context = (CUcontext)1;
    return 0;
}

CUresult cuMemAlloc_v2(CUdeviceptr *pointer, size_t size) {
    *pointer = size ? 0x10000 : 0;
    return 0;
}

CUresult cuMemFree_v2(CUdeviceptr pointer) {
    (void)pointer;
    return 0;
}

CUresult cuCtxDestroy_v2(CUcontext context) {
    (void)context;
    return 0;
}

CUresult cuGetErrorName(CUresult error, const char **name) {
    switch (error) {
    case 0: *name = "CUDA_SUCCESS"; break;
    case 3: *name = "CUDA_ERROR_NOT_INITIALIZED"; break;
    case 100: *name = "CUDA_ERROR_NO_DEVICE"; break;
    case 101: *name = "CUDA_ERROR_INVALID_DEVICE"; break;
    case 802: *name = "CUDA_ERROR_SYSTEM_NOT_READY"; break;
    case 803: *name = "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"; break;
    default: *name = "CUDA_ERROR_UNKNOWN"; break;
    }
    return 0;
}

CUresult cuGetErrorString(CUresult error, const char **text) {
    switch (error) {
    case 0: *text = "no error"; break;
    case 3: *text = "initialization error"; break;
    case 100: *text = "no CUDA-capable device is detected"; break;
    case 101: *text = "invalid device ordinal"; break;
    case 802: *text = "system not yet initialized"; break;
    case 803: *text = "system has unsupported display driver / cuda driver combination"; break;
    default: *text = "unknown error"; break;
    }
    return 0;
}
