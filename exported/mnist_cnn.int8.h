#ifndef MNIST_CNN_INT8_TFLITE_H
#define MNIST_CNN_INT8_TFLITE_H

#ifdef __cplusplus
extern "C" {
#endif

/* The model flatbuffer, 16-byte aligned, 497720 bytes. */
extern const unsigned char mnist_cnn_int8_tflite[];
extern const unsigned int mnist_cnn_int8_tflite_len;

#ifdef __cplusplus
}
#endif

#endif /* MNIST_CNN_INT8_TFLITE_H */
