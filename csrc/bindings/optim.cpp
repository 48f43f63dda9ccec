#include "../kernels/optim.h"

#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

#include "bind.h"

namespace fc {

template <typename T>
static void bind_optim_typed(py::module_& m) {
  m.def(typed<T>("sgd_step").c_str(),
        [](uintptr_t param, uintptr_t grad, uintptr_t velocity, int64_t n, double lr, double momentum,
           double weight_decay, bool nesterov, uintptr_t stream) {
          sgd_step<T>(ptr<T>(param), ptr<const T>(grad), ptr<T>(velocity), n, lr, momentum, weight_decay, nesterov,
                      ptr<void>(stream));
        },
        nogil());
  m.def(typed<T>("sgd_step_foreach").c_str(),
        [](const std::vector<uintptr_t>& params, const std::vector<uintptr_t>& grads,
           const std::vector<uintptr_t>& velocities, const std::vector<int64_t>& sizes, double lr, double momentum,
           double weight_decay, bool nesterov, uintptr_t stream) {
          const size_t count = params.size();
          if (grads.size() != count || velocities.size() != count || sizes.size() != count)
            throw std::invalid_argument("sgd_step_foreach: params, grads, velocities and sizes differ in length");
          std::vector<T*> p(count), v(count);
          std::vector<const T*> g(count);
          for (size_t k = 0; k < count; ++k) {
            p[k] = ptr<T>(params[k]);
            g[k] = ptr<const T>(grads[k]);
            v[k] = ptr<T>(velocities[k]);
          }
          sgd_step_foreach<T>(p.data(), g.data(), v.data(), sizes.data(), (int)count, lr, momentum, weight_decay,
                              nesterov, ptr<void>(stream));
        },
        nogil());
  m.def(typed<T>("adam_step_foreach").c_str(),
        [](const std::vector<uintptr_t>& params, const std::vector<uintptr_t>& grads, const std::vector<uintptr_t>& ms,
           const std::vector<uintptr_t>& vs, const std::vector<int64_t>& sizes, const std::vector<double>& step_sizes,
           const std::vector<double>& bias_corrections2_sqrt, double beta1, double beta2, double eps,
           double weight_decay, bool decoupled, double decay, uintptr_t stream) {
          const size_t count = params.size();
          if (grads.size() != count || ms.size() != count || vs.size() != count || sizes.size() != count ||
              step_sizes.size() != count || bias_corrections2_sqrt.size() != count)
            throw std::invalid_argument("adam_step_foreach: the per-tensor lists differ in length");
          std::vector<T*> p(count), m1(count), m2(count);
          std::vector<const T*> g(count);
          for (size_t k = 0; k < count; ++k) {
            p[k] = ptr<T>(params[k]);
            g[k] = ptr<const T>(grads[k]);
            m1[k] = ptr<T>(ms[k]);
            m2[k] = ptr<T>(vs[k]);
          }
          adam_step_foreach<T>(p.data(), g.data(), m1.data(), m2.data(), sizes.data(), step_sizes.data(),
                               bias_corrections2_sqrt.data(), (int)count, beta1, beta2, eps, weight_decay, decoupled,
                               decay, ptr<void>(stream));
        },
        nogil());
  m.def(typed<T>("adam_step").c_str(),
        [](uintptr_t param, uintptr_t grad, uintptr_t m_, uintptr_t v, int64_t n, double beta1, double beta2,
           double eps, double weight_decay, bool decoupled, double decay, double step_size,
           double bias_correction2_sqrt, uintptr_t stream) {
          adam_step<T>(ptr<T>(param), ptr<const T>(grad), ptr<T>(m_), ptr<T>(v), n, beta1, beta2, eps, weight_decay,
                       decoupled, decay, step_size, bias_correction2_sqrt, ptr<void>(stream));
        },
        nogil());
}

void bind_optim(py::module_& m) {
  bind_optim_typed<float>(m);
  bind_optim_typed<double>(m);
}

}  // namespace fc
