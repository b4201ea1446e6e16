/*
 * A fake libnvidia-ml.so.1: the NVML functions model-fleet's exporter calls through pynvml,
 * answering from a state file instead of a driver. Used by the tests and by the live demo.
 *
 * The file is named by $MODEL_FLEET_FAKE_NVML_STATE and re-read whenever it changes (write
 * it to a temporary name and rename it over the old one). One "key=value" per line:
 *
 *   init_error=0                  NVML return code of nvmlInit (9: driver not loaded)
 *   driver_version=550.54.15
 *   gpu.0.name=NVIDIA GeForce RTX 3060
 *   gpu.0.uuid=GPU-...
 *   gpu.0.total=12884901888       bytes
 *   gpu.0.reserved=314572800      bytes (memory info v2 only)
 *   gpu.0.used=2147483648         bytes, without the reserved part
 *   gpu.0.free=...                optional: defaults to total - reserved - used
 *   gpu.0.error=0                 return code of every call about this GPU (15: GPU lost)
 *   gpu.0.processes=1234:2147483648,5678:1048576     compute processes, pid:bytes
 *   gpu.0.graphics_processes=...                     graphics processes, pid:bytes
 *   error.nvmlDeviceGetMemoryInfo_v2=13              a forced return code for one function
 *
 * GPUs are counted from gpu.0 upwards until an index has no name. No state file: nvmlInit
 * fails with NVML_ERROR_DRIVER_NOT_LOADED, as on a machine without a driver.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 16
#define MAX_PROCS 64
#define MAX_ERRORS 32
#define TEXT 96

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define NVML_MEMORY_V2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2 << 24)))

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long used;
} fake_process;

typedef struct fake_gpu {
    char name[TEXT];
    char uuid[TEXT];
    unsigned long long total, reserved, used, free;
    int free_set;
    int error;
    int n_compute, n_graphics;
    fake_process compute[MAX_PROCS];
    fake_process graphics[MAX_PROCS];
} fake_gpu;

typedef fake_gpu *nvmlDevice_t;

typedef struct {
    char function[64];
    int code;
} forced_error;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;
static int state_present;
static int init_error;
static char driver_version[TEXT] = "550.54.15";
static int n_gpus;
static fake_gpu gpus[MAX_GPUS];
static int n_errors;
static forced_error errors[MAX_ERRORS];
static struct stat seen;

static void parse_processes(const char *value, fake_process *out, int *count) {
    *count = 0;
    const char *p = value;
    while (*p && *count < MAX_PROCS) {
        char *end;
        unsigned long pid = strtoul(p, &end, 10);
        if (end == p || *end != ':') break;
        p = end + 1;
        unsigned long long used = strtoull(p, &end, 10);
        if (end == p) break;
        out[*count].pid = (unsigned int)pid;
        out[*count].used = used;
        (*count)++;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
}

static void set_key(const char *key, const char *value) {
    if (strcmp(key, "init_error") == 0) {
        init_error = atoi(value);
    } else if (strcmp(key, "driver_version") == 0) {
        snprintf(driver_version, sizeof driver_version, "%s", value);
    } else if (strncmp(key, "error.", 6) == 0) {
        if (n_errors < MAX_ERRORS) {
            snprintf(errors[n_errors].function, sizeof errors[n_errors].function, "%s", key + 6);
            errors[n_errors].code = atoi(value);
            n_errors++;
        }
    } else if (strncmp(key, "gpu.", 4) == 0) {
        char *end;
        long index = strtol(key + 4, &end, 10);
        if (end == key + 4 || *end != '.' || index < 0 || index >= MAX_GPUS) return;
        const char *field = end + 1;
        fake_gpu *g = &gpus[index];
        if (strcmp(field, "name") == 0) snprintf(g->name, sizeof g->name, "%s", value);
        else if (strcmp(field, "uuid") == 0) snprintf(g->uuid, sizeof g->uuid, "%s", value);
        else if (strcmp(field, "total") == 0) g->total = strtoull(value, NULL, 10);
        else if (strcmp(field, "reserved") == 0) g->reserved = strtoull(value, NULL, 10);
        else if (strcmp(field, "used") == 0) g->used = strtoull(value, NULL, 10);
        else if (strcmp(field, "free") == 0) { g->free = strtoull(value, NULL, 10); g->free_set = 1; }
        else if (strcmp(field, "error") == 0) g->error = atoi(value);
        else if (strcmp(field, "processes") == 0) parse_processes(value, g->compute, &g->n_compute);
        else if (strcmp(field, "graphics_processes") == 0)
            parse_processes(value, g->graphics, &g->n_graphics);
    }
}

/* Re-read the state file if it changed since the last call. Called with the lock held. */
static void refresh(void) {
    const char *path = getenv("MODEL_FLEET_FAKE_NVML_STATE");
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        state_present = 0;
        memset(&seen, 0, sizeof seen);
        return;
    }
    if (state_present && st.st_ino == seen.st_ino && st.st_size == seen.st_size &&
        st.st_mtim.tv_sec == seen.st_mtim.tv_sec && st.st_mtim.tv_nsec == seen.st_mtim.tv_nsec)
        return;
    FILE *f = fopen(path, "r");
    if (!f) {
        state_present = 0;
        return;
    }
    memset(gpus, 0, sizeof gpus);
    n_errors = 0;
    init_error = 0;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0') continue;
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        set_key(line, eq + 1);
    }
    fclose(f);
    n_gpus = 0;
    while (n_gpus < MAX_GPUS && gpus[n_gpus].name[0]) {
        fake_gpu *g = &gpus[n_gpus];
        if (!g->free_set) {
            unsigned long long taken = g->reserved + g->used;
            g->free = g->total > taken ? g->total - taken : 0;
        }
        n_gpus++;
    }
    seen = st;
    state_present = 1;
}

static int forced(const char *function) {
    for (int i = 0; i < n_errors; i++)
        if (strcmp(errors[i].function, function) == 0) return errors[i].code;
    return NVML_SUCCESS;
}

/* Common entry of every call: refresh the state, check initialisation and forced errors. */
static nvmlReturn_t enter(const char *function, int needs_init) {
    pthread_mutex_lock(&lock);
    refresh();
    if (needs_init && !initialized) return NVML_ERROR_UNINITIALIZED;
    return forced(function);
}

static nvmlReturn_t leave(nvmlReturn_t ret) {
    pthread_mutex_unlock(&lock);
    return ret;
}

static int valid(nvmlDevice_t device) {
    return device >= &gpus[0] && device < &gpus[n_gpus];
}

static nvmlReturn_t do_init(const char *function) {
    nvmlReturn_t ret = enter(function, 0);
    if (ret != NVML_SUCCESS) return leave(ret);
    if (!state_present) return leave(NVML_ERROR_DRIVER_NOT_LOADED);
    if (init_error) return leave(init_error);
    initialized++;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlInit(void) { return do_init("nvmlInit"); }
nvmlReturn_t nvmlInit_v2(void) { return do_init("nvmlInit_v2"); }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return do_init("nvmlInitWithFlags");
}

nvmlReturn_t nvmlShutdown(void) {
    nvmlReturn_t ret = enter("nvmlShutdown", 1);
    if (ret == NVML_SUCCESS) initialized--;
    return leave(ret);
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 7: return "Insufficient Size";
    case 9: return "Driver Not Loaded";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 15: return "GPU is lost";
    case 25: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    nvmlReturn_t ret = enter("nvmlSystemGetDriverVersion", 1);
    if (ret != NVML_SUCCESS) return leave(ret);
    if (strlen(driver_version) + 1 > length) return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    strcpy(version, driver_version);
    return leave(NVML_SUCCESS);
}

static nvmlReturn_t get_count(const char *function, unsigned int *count) {
    nvmlReturn_t ret = enter(function, 1);
    if (ret != NVML_SUCCESS) return leave(ret);
    if (!count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = (unsigned int)n_gpus;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return get_count("nvmlDeviceGetCount", count); }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    return get_count("nvmlDeviceGetCount_v2", count);
}

static nvmlReturn_t get_handle(const char *function, unsigned int index, nvmlDevice_t *device) {
    nvmlReturn_t ret = enter(function, 1);
    if (ret != NVML_SUCCESS) return leave(ret);
    if (!device || index >= (unsigned int)n_gpus) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (gpus[index].error) return leave(gpus[index].error);
    *device = &gpus[index];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return get_handle("nvmlDeviceGetHandleByIndex", index, device);
}
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    return get_handle("nvmlDeviceGetHandleByIndex_v2", index, device);
}

/* Entry of the calls about one GPU: the GPU must exist and its error is returned. */
static nvmlReturn_t enter_device(const char *function, nvmlDevice_t device) {
    nvmlReturn_t ret = enter(function, 1);
    if (ret != NVML_SUCCESS) return ret;
    if (!valid(device)) return NVML_ERROR_INVALID_ARGUMENT;
    return device->error;
}

static nvmlReturn_t copy_text(const char *text, char *out, unsigned int length) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, text);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    nvmlReturn_t ret = enter_device("nvmlDeviceGetName", device);
    if (ret != NVML_SUCCESS) return leave(ret);
    return leave(copy_text(device->name, name, length));
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    nvmlReturn_t ret = enter_device("nvmlDeviceGetUUID", device);
    if (ret != NVML_SUCCESS) return leave(ret);
    return leave(copy_text(device->uuid, uuid, length));
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    nvmlReturn_t ret = enter_device("nvmlDeviceGetMemoryInfo", device);
    if (ret != NVML_SUCCESS) return leave(ret);
    if (!memory) return leave(NVML_ERROR_INVALID_ARGUMENT);
    /* version 1 counts the reserved memory as used, as old drivers do */
    memory->total = device->total;
    memory->free = device->free;
    memory->used = device->total > device->free ? device->total - device->free : 0;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    nvmlReturn_t ret = enter_device("nvmlDeviceGetMemoryInfo_v2", device);
    if (ret != NVML_SUCCESS) return leave(ret);
    if (!memory) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != NVML_MEMORY_V2) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    memory->total = device->total;
    memory->reserved = device->reserved;
    memory->free = device->free;
    memory->used = device->used;
    return leave(NVML_SUCCESS);
}

static nvmlReturn_t list_processes(const char *function, nvmlDevice_t device, int graphics,
                                   unsigned int *count, nvmlProcessInfo_t *infos) {
    nvmlReturn_t ret = enter_device(function, device);
    if (ret != NVML_SUCCESS) return leave(ret);
    if (!count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    int n = graphics ? device->n_graphics : device->n_compute;
    fake_process *procs = graphics ? device->graphics : device->compute;
    if (!infos || *count < (unsigned int)n) {
        *count = (unsigned int)n;
        return leave(n == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (int i = 0; i < n; i++) {
        infos[i].pid = procs[i].pid;
        infos[i].usedGpuMemory = procs[i].used;
        infos[i].gpuInstanceId = 0xFFFFFFFFu;
        infos[i].computeInstanceId = 0xFFFFFFFFu;
    }
    *count = (unsigned int)n;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    return list_processes("nvmlDeviceGetComputeRunningProcesses_v3", device, 0, count, infos);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    return list_processes("nvmlDeviceGetComputeRunningProcesses_v2", device, 0, count, infos);
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                      nvmlProcessInfo_t *infos) {
    return list_processes("nvmlDeviceGetGraphicsRunningProcesses_v3", device, 1, count, infos);
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device, unsigned int *count,
                                                      nvmlProcessInfo_t *infos) {
    return list_processes("nvmlDeviceGetGraphicsRunningProcesses_v2", device, 1, count, infos);
}
